"""The GPT: layers, the backbone, and the heads on it."""

from tfchat.model.backbone import GPTBackbone
from tfchat.model.gpt import HEADS, build_gpt, build_model, flops_per_token, head_of, param_count
from tfchat.model.heads import CausalLM, RewardModel

__all__ = ["HEADS", "CausalLM", "GPTBackbone", "RewardModel", "build_gpt", "build_model", "flops_per_token", "head_of",
           "param_count"]
