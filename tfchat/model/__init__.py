"""The GPT: layers, the backbone, and the heads on it."""

from tfchat.model.backbone import GPTBackbone
from tfchat.model.gpt import build_gpt, flops_per_token, param_count
from tfchat.model.heads import CausalLM

__all__ = ["CausalLM", "GPTBackbone", "build_gpt", "flops_per_token", "param_count"]
