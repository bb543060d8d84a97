"""Clients for a served tfchat model: TF Serving's REST and gRPC Predict APIs.

Both work against `tensorflow_model_server` and against `serving.server`.

    python -m serving.client --url http://localhost:8501 "Once upon a time"
    python -m serving.client --grpc localhost:8500 --chat "Hello!"
    python -m serving.client --chat --topic music --style happy "Hello!"   # a model trained with tags
    python -m serving.client --chat --topic music --guidance 8 "Hello!"    # steer harder

Example:

>>> client = RestClient("http://localhost:8501", model="tfchat")     # doctest: +SKIP
>>> client.generate(["Once upon a time"], max_new_tokens=20)          # doctest: +SKIP
['...']
>>> GrpcClient("localhost:8500").chat([{"role": "user", "content": "Hi"}])  # doctest: +SKIP
'...'
"""

from __future__ import annotations

import logging
import sys
from typing import Mapping, Sequence

import numpy as np

from tfchat import cli
from tfchat.inference.sampling import SamplingParams

log = logging.getLogger(__name__)


def unreachable(url: str, error: Exception) -> Exception:
    """The error for a server that does not answer, naming the command that starts one (or for a URL
    that names no server at all)."""
    import httpx

    if isinstance(error, httpx.InvalidURL):
        return ValueError(f"invalid server URL {url!r}: {error}")
    return ConnectionError(f"cannot reach a model server at {url} ({error}); start one with "
                           "`python -m serving.server --model exports/tfchat` (or tensorflow_model_server)")


class ServingError(RuntimeError):
    """The server answered with an error; `status` is the HTTP status or gRPC code name."""

    def __init__(self, status, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def _sampling(n: int, sampling: SamplingParams | None, overrides: dict, guided: bool = False) -> dict:
    """Every sampling input, one value per row: stock TF Serving has no defaults. Default: greedy.
    `guidance` is an input of `chat_tagged` only (`guided`)."""
    params = (sampling or SamplingParams.greedy()).replace(**overrides).resolved()
    return {name: [value] * n for name, value in params.to_dict().items() if guided or name != "guidance"}


def _conversation(messages: Sequence[Mapping[str, str]]) -> tuple[list, list]:
    return [[m["role"] for m in messages]], [[m["content"] for m in messages]]


class _Client:
    """Shared high-level calls; subclasses implement `predict(inputs, signature_name)` -> dict of numpy arrays."""

    def predict(self, inputs: dict, signature_name: str = "serving_default", version: int | None = None) -> dict:
        raise NotImplementedError

    def generate(self, prompts: Sequence[str], sampling: SamplingParams | None = None, **overrides) -> list[str]:
        """Continues each prompt (the `generate` signature); `overrides` replace fields of `sampling`."""
        prompts = list(prompts)
        inputs = {"prompt": prompts, **_sampling(len(prompts), sampling, overrides)}
        return [_text(t) for t in np.asarray(self.predict(inputs, "generate")["text"]).reshape(-1)]

    def chat(self, messages: Sequence[Mapping[str, str]], sampling: SamplingParams | None = None,
             tags: Mapping[str, str] | None = None, **overrides) -> str:
        """The assistant's reply to a conversation (the `chat` signature; with `tags`, e.g. `{"topic": "music"}`,
        the `chat_tagged` signature of a model trained with tags)."""
        roles, contents = _conversation(messages)
        tags = {k: v for k, v in (tags or {}).items() if v is not None}
        inputs = {"roles": roles, "contents": contents, **_sampling(1, sampling, overrides, guided=bool(tags))}
        if tags:
            inputs["tags"] = [[f"{name}={value}" for name, value in tags.items()]]
        return _text(np.asarray(self.predict(inputs, "chat_tagged" if tags else "chat")["reply"]).reshape(-1)[0])

    def score(self, texts: Sequence[str]) -> list[float]:
        """Mean negative log-likelihood per token of each text (the `score` signature)."""
        out = self.predict({"text": list(texts)}, "score")
        return [float(x) for x in np.asarray(out["loss"]).reshape(-1)]


def _text(x) -> str:
    return x.decode("utf-8", errors="replace") if isinstance(x, bytes) else str(x)


class RestClient(_Client):
    """TF Serving REST: `POST /v1/models/NAME[/versions/N]:predict` (columnar `inputs`)."""

    def __init__(self, url: str = "http://localhost:8501", model: str = "tfchat", timeout: float = 120.0, http=None):
        import httpx

        self.url = url.rstrip("/")
        self.model = model
        self._http = http or httpx.Client(timeout=timeout)

    def _path(self, version: int | None) -> str:
        return f"{self.url}/v1/models/{self.model}" + (f"/versions/{version}" if version is not None else "")

    def _check(self, response):
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text}
        if response.status_code != 200:
            err = body.get("error") if isinstance(body, dict) else body
            raise ServingError(response.status_code, err.get("message", str(err)) if isinstance(err, dict) else str(err))
        return body

    def _send(self, method: str, path: str, **kwargs):
        import httpx

        try:
            return self._check(self._http.request(method, path, **kwargs))
        except (httpx.TransportError, httpx.InvalidURL) as e:
            raise unreachable(self.url, e) from e

    def status(self, version: int | None = None) -> dict:
        return self._send("GET", self._path(version))

    def metadata(self, version: int | None = None) -> dict:
        return self._send("GET", self._path(version) + "/metadata")

    def signature_names(self) -> list[str]:
        return sorted(self.metadata()["metadata"]["signature_def"]["signature_def"])

    def predict(self, inputs: dict, signature_name: str = "serving_default", version: int | None = None) -> dict:
        body = {"signature_name": signature_name, "inputs": {k: _jsonable(v) for k, v in inputs.items()}}
        out = self._send("POST", self._path(version) + ":predict", json=body)["outputs"]
        return {k: np.asarray(v) for k, v in out.items()} if isinstance(out, dict) else {"output": np.asarray(out)}

    def predict_instances(self, instances: list, signature_name: str = "serving_default", version: int | None = None) -> list:
        """Row format: `instances` in, `predictions` out, as TF Serving returns them."""
        body = {"signature_name": signature_name, "instances": instances}
        return self._send("POST", self._path(version) + ":predict", json=body)["predictions"]

    def close(self) -> None:
        self._http.close()


def _jsonable(v):
    if isinstance(v, np.ndarray):
        v = v.tolist()
    if isinstance(v, bytes):
        return v.decode("utf-8")
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


class GrpcClient(_Client):
    """TF Serving gRPC `PredictionService.Predict` (tensorflow-serving-api)."""

    def __init__(self, target: str = "localhost:8500", model: str = "tfchat", timeout: float = 120.0):
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc

        self.model, self.target = model, target
        self.timeout = timeout
        self._channel = grpc.insecure_channel(target, options=[("grpc.max_receive_message_length", 256 << 20)])
        self._stub = prediction_service_pb2_grpc.PredictionServiceStub(self._channel)

    def predict(self, inputs: dict, signature_name: str = "serving_default", version: int | None = None) -> dict:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2

        request = predict_pb2.PredictRequest()
        request.model_spec.name = self.model
        request.model_spec.signature_name = signature_name
        if version is not None:
            request.model_spec.version.value = version
        for k, v in inputs.items():
            array = np.asarray(v)
            if array.dtype.kind == "U":
                array = np.vectorize(lambda s: s.encode("utf-8"), otypes=[object])(array)
            elif array.dtype.kind == "f":
                array = array.astype(np.float32)
            elif array.dtype.kind == "i":
                array = array.astype(np.int32)
            request.inputs[k].CopyFrom(tf.make_tensor_proto(array))
        try:
            response = self._stub.Predict(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from e
        return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}

    def signature_names(self) -> list[str]:
        import grpc
        from tensorflow_serving.apis import get_model_metadata_pb2

        request = get_model_metadata_pb2.GetModelMetadataRequest()
        request.model_spec.name = self.model
        request.metadata_field.append("signature_def")
        try:
            response = self._stub.GetModelMetadata(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise self._error(e) from e
        sig_map = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        return sorted(sig_map.signature_def)

    def _error(self, e) -> Exception:
        import grpc

        if e.code() == grpc.StatusCode.UNAVAILABLE:
            return unreachable(self.target, e.details())
        return ServingError(e.code().name, e.details())

    def close(self) -> None:
        self._channel.close()


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m serving.client", __doc__)
    parser.add_argument("texts", nargs="+", help="prompts (or, with --chat, one user message each)")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default="http://localhost:8501", help="REST endpoint")
    target.add_argument("--grpc", default=None, help="gRPC target host:port (instead of REST)")
    parser.add_argument("--model", default="tfchat", help="model name on the server")
    parser.add_argument("--chat", action="store_true", help="send each text as a one-message conversation")
    parser.add_argument("--topic", default=None, help="with --chat: the reply's topic tag (a model trained with tags)")
    parser.add_argument("--style", default=None, help="with --chat: the reply's style tag (a model trained with tags)")
    g = parser.add_argument_group("sampling (default: greedy)")
    g.add_argument("--max-new-tokens", type=cli.positive_int, default=64, help="longest continuation in tokens")
    g.add_argument("--temperature", type=cli.non_negative_float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=cli.non_negative_int, default=0, help="0 = off")
    g.add_argument("--top-p", type=cli.probability, default=1.0, help="1 = off")
    g.add_argument("--seed", type=cli.int32, default=0, help="sampling seed")
    g.add_argument("--guidance", type=cli.guidance, default=1.0,
                   help="with --topic/--style: steer harder by classifier-free guidance (1 = off)")
    args = parser.parse_args(argv)
    tags = {k: v for k, v in (("topic", args.topic), ("style", args.style)) if v is not None}
    if tags and not args.chat:
        parser.error("--topic and --style steer chat replies: add --chat")
    if args.guidance != 1 and not tags:
        parser.error("--guidance steers tagged replies: add --chat with --topic or --style")

    def body() -> int:
        if args.grpc:  # the gRPC client builds TensorProtos: TensorFlow, and its start-up chatter filtered
            cli.setup(args.verbose)
        else:
            cli.setup_logging(args.verbose)
        client = GrpcClient(args.grpc, args.model) if args.grpc else RestClient(args.url, args.model)
        sampling = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, seed=args.seed, guidance=args.guidance)
        if args.chat:
            outputs = [client.chat([{"role": "user", "content": t}], sampling, tags=tags) for t in args.texts]
        else:
            outputs = client.generate(args.texts, sampling)
        for text in outputs:
            print(text)
        return 0

    return cli.run(body, expected=(ServingError,))


if __name__ == "__main__":
    sys.exit(main())
