"""TF Serving's gRPC API for tfchat's server: PredictionService (Predict, GetModelMetadata) and ModelService.

Clients written for tensorflow_model_server (`tensorflow-serving-api` stubs,
`serving.client.GrpcClient`) work unchanged.

Example:

>>> server = create_grpc_server(backend, port=8500)  # doctest: +SKIP
"""

from __future__ import annotations

import tensorflow as tf

from serving.backend import Backend
from serving.codec import SAMPLING_INPUTS, batch_rows, sampling_columns
from serving.errors import DEFAULT_MAX_ROWS, BadRequest, NotFound, within_rows
from tfchat.cli import tf_error_message


def create_grpc_server(backend: Backend, port: int, host: str = "[::]", max_rows: int = DEFAULT_MAX_ROWS):
    """A gRPC server speaking TF Serving's PredictionService (Predict, GetModelMetadata) and ModelService status;
    a Predict of more than `max_rows` rows is INVALID_ARGUMENT."""
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        get_model_status_pb2,
        model_service_pb2_grpc,
        predict_pb2,
        prediction_service_pb2_grpc,
    )
    from tensorflow.core.protobuf import meta_graph_pb2

    def resolve(spec, context):
        version = spec.version.value if spec.HasField("version") else None
        if spec.name != backend.name or (version is not None and version != backend.version):
            context.abort(grpc.StatusCode.NOT_FOUND, f"Servable not found for request: {spec.name} {version or ''}".strip())

    class Prediction(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            resolve(request.model_spec, context)
            signature = request.model_spec.signature_name or "serving_default"
            try:
                specs, _ = backend.signature_specs(signature)
                inputs = {}
                for k, proto in request.inputs.items():
                    if k not in specs:
                        raise BadRequest(f"unknown input '{k}'; signature inputs: {sorted(specs)}")
                    inputs[k] = tf.constant(tf.make_ndarray(proto), specs[k].dtype)
                missing = sorted(set(specs) - set(inputs))
                if missing and set(missing) <= SAMPLING_INPUTS and inputs:
                    batch = int(next(iter(inputs.values())).shape[0])
                    for k, values in sampling_columns(missing, batch, backend.defaults).items():
                        inputs[k] = tf.constant(values, specs[k].dtype)
                elif missing:
                    raise BadRequest(f"missing input(s) {missing}")
                within_rows(batch_rows(inputs), max_rows, "rows")
                outputs = backend.predict(signature, inputs)
            except NotFound as e:
                context.abort(grpc.StatusCode.NOT_FOUND, str(e))
            except (BadRequest, tf.errors.InvalidArgumentError, ValueError, TypeError) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, tf_error_message(e))
            response = predict_pb2.PredictResponse()
            response.model_spec.name = backend.name
            response.model_spec.version.value = backend.version
            response.model_spec.signature_name = signature
            for k, v in outputs.items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v))
            return response

        def GetModelMetadata(self, request, context):
            resolve(request.model_spec, context)
            sig_map = get_model_metadata_pb2.SignatureDefMap()
            for name in backend.signatures:
                inputs, outputs = backend.signature_specs(name)
                sig = sig_map.signature_def[name]
                sig.method_name = "tensorflow/serving/predict"
                for group, specs in ((sig.inputs, inputs), (sig.outputs, outputs)):
                    for k, s in specs.items():
                        info = meta_graph_pb2.TensorInfo(name=k, dtype=s.dtype.as_datatype_enum)
                        info.tensor_shape.CopyFrom(s.shape.as_proto())
                        group[k].CopyFrom(info)
            response = get_model_metadata_pb2.GetModelMetadataResponse()
            response.model_spec.name = backend.name
            response.model_spec.version.value = backend.version
            response.metadata["signature_def"].Pack(sig_map)
            return response

    class Models(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            resolve(request.model_spec, context)
            response = get_model_status_pb2.GetModelStatusResponse()
            status = response.model_version_status.add()
            status.version = backend.version
            status.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Prediction(), server)
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Models(), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    server.start()
    server.bound_port = bound
    return server
