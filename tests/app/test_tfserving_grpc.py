"""TF Serving's gRPC API (``app/protocols/tfserving/servicer.py``), driven by its own client.

The schema read from ``tfserving.proto`` must be TF Serving's on the wire: each of its
fields is compared with the generated code of ``tensorflow-serving-api`` and
TensorFlow (number, name, type, label, oneof, the message it holds), and messages cross
between the two. Against a real uvicorn process, ``tensorflow_serving.apis`` stubs with
tensors from ``tf.make_tensor_proto``: versions, metadata, status, and malformed requests
with their codes (that each input form answers what ``/predict`` answers: test_answers.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from app.protocols.messages import TFSERVING
from servicekit import Server
from tests import images as test_images
from tests.app.protocols import (
    TOLERANCE,
    images,
    pixels,
    predicted,
)

# Where TF Serving's messages live when not in tensorflow.serving (ours are all there).
ELSEWHERE = {
    "TensorProto": "tensorflow.TensorProto",
    "TensorShapeProto": "tensorflow.TensorShapeProto",
    "TensorShapeProto.Dim": "tensorflow.TensorShapeProto.Dim",
    "DataType": "tensorflow.DataType",
    "Int64Value": "google.protobuf.Int64Value",
    "Any": "google.protobuf.Any",
    **{
        name: f"tensorflow.{name}"
        for name in ("BytesList", "FloatList", "Int64List", "Feature", "Features", "Example")
    },
    "TensorInfo": "tensorflow.TensorInfo",
    "SignatureDef": "tensorflow.SignatureDef",
}
PACKAGE = "tensorflow.serving."


def theirs(full_name: str) -> str:
    """The full name TF Serving's generated code gives one of our messages or enums."""
    local = full_name.removeprefix(PACKAGE)
    return ELSEWHERE.get(local, full_name)


def same_field(ours: FieldDescriptor, standard: FieldDescriptor) -> None:
    assert (ours.name, ours.is_repeated) == (standard.name, standard.is_repeated)
    assert (ours.containing_oneof is None) == (standard.containing_oneof is None), ours.name
    if (ours.type, standard.type) == (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_ENUM):
        return  # StatusProto.error_code: an enum on their side; both a varint on the wire
    assert ours.type == standard.type, ours.full_name
    if ours.enum_type is not None:
        same_enum(ours.enum_type, standard.enum_type)
    if ours.message_type is None:
        return
    if ours.message_type.GetOptions().map_entry:
        same_message(ours.message_type, standard.message_type)
    else:
        assert theirs(ours.message_type.full_name) == standard.message_type.full_name


def same_message(ours: Descriptor, standard: Descriptor) -> None:
    """Every field of ours is theirs (we leave out what the service does not read)."""
    for field in ours.fields:
        assert field.number in standard.fields_by_number, field.full_name
        same_field(field, standard.fields_by_number[field.number])


def same_enum(ours: EnumDescriptor, standard: EnumDescriptor) -> None:
    assert theirs(ours.full_name) == standard.full_name
    for value in ours.values:
        assert standard.values_by_name[value.name].number == value.number, value.name


@pytest.mark.parametrize(
    "name",
    sorted(n for n, m in TFSERVING.messages.items() if not m.DESCRIPTOR.GetOptions().map_entry),
)
def test_messages_are_tf_servings(name: str) -> None:
    ours = TFSERVING.messages[name].DESCRIPTOR
    standard = descriptor_pool.Default().FindMessageTypeByName(theirs(ours.full_name))
    same_message(ours, standard)


def test_services_calls_are_tf_servings() -> None:
    assert prediction_service_pb2 and model_service_pb2  # their services, in the default pool
    pool = descriptor_pool.Default()
    for service, methods in TFSERVING.services.items():
        standard = pool.FindServiceByName(service)
        for name, method in methods.items():
            assert method.path == f"/{service}/{name}"
            call = standard.methods_by_name[name]
            assert theirs(method.request.DESCRIPTOR.full_name) == call.input_type.full_name
            assert theirs(method.response.DESCRIPTOR.full_name) == call.output_type.full_name


def test_messages_cross_the_wire_both_ways() -> None:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.version.value = "catdog", 2
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.full((1, 2, 2, 3), 0.5, "f4")))
    request.output_filter.append("probabilities")
    ours = TFSERVING.messages["PredictRequest"].FromString(request.SerializeToString())
    assert ours.model_spec.version.value == 2
    tensor = ours.inputs["images"]
    assert [d.size for d in tensor.tensor_shape.dim] == [1, 2, 2, 3]
    assert np.frombuffer(tensor.tensor_content, "<f4").tolist() == [0.5] * 12
    assert predict_pb2.PredictRequest.FromString(ours.SerializeToString()) == request


# ---------------------------------------------------------------- a real process


@pytest.fixture(scope="module")
def server(protocols_server: Server) -> Server:
    """The service the protocol modules share (tests/app/conftest.py)."""
    return protocols_server


@pytest.fixture(scope="module")
def channel(server: Server) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as c:  # type: ignore[attr-defined]
        yield c


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> prediction_service_pb2_grpc.PredictionServiceStub:
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


def predict_request(name: str, value: np.ndarray | list[bytes], **spec: object) -> Message:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "catdog"
    for key, given in spec.items():
        if key == "version":
            request.model_spec.version.value = given  # type: ignore[assignment]
        else:
            setattr(request.model_spec, key, given)
    request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def probabilities(response: Message) -> np.ndarray:
    return tf.make_ndarray(response.outputs["probabilities"])


def test_tensorflows_other_forms_of_a_tensor(stub: object, server: Server) -> None:
    """A scalar string (one file), and one float_val standing for every pixel, as
    TensorFlow reads them."""
    [file] = images(1)
    scalar = predict_pb2.PredictRequest(model_spec={"name": "catdog"})
    scalar.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(file))
    answer = probabilities(stub.Predict(scalar, timeout=60))  # type: ignore[attr-defined]
    np.testing.assert_allclose(answer, predicted(server.url, [file]), atol=TOLERANCE)
    grey = predict_pb2.PredictRequest(model_spec={"name": "catdog"})
    grey.inputs["images"].CopyFrom(tf.make_tensor_proto(0.5, shape=[2, 32, 32, 3]))
    full = predict_request("images", np.full((2, 32, 32, 3), 0.5, np.float32))
    one = probabilities(stub.Predict(grey, timeout=60))  # type: ignore[attr-defined]
    np.testing.assert_allclose(one, probabilities(stub.Predict(full)), atol=TOLERANCE)  # type: ignore[attr-defined]
    assert len(grey.inputs["images"].float_val) == 1


def test_explicit_version(stub: object) -> None:
    files = images(2)
    answers = {}
    for version in (1, 2):
        response = stub.Predict(predict_request("image_bytes", files, version=version))  # type: ignore[attr-defined]
        assert response.model_spec.version.value == version
        answers[version] = probabilities(response)
    assert np.abs(answers[1] - answers[2]).max() > 1e-3  # two different models answered
    for spec in ({"version": 3}, {"version_label": "stable"}):
        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(predict_request("image_bytes", files, **spec))  # type: ignore[attr-defined]
        assert error.value.code() == grpc.StatusCode.NOT_FOUND, spec  # type: ignore[attr-defined]


def test_metadata_and_status(stub: object, channel: grpc.Channel) -> None:
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "catdog"
    response = stub.GetModelMetadata(request, timeout=60)  # type: ignore[attr-defined]
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def["serving_default"]
    shapes = {
        name: (tf.dtypes.as_dtype(info.dtype).name, [d.size for d in info.tensor_shape.dim])
        for name, info in [*signature.inputs.items(), *signature.outputs.items()]
    }
    assert shapes == {
        "image_bytes": ("string", [-1]),
        "images": ("float32", [-1, 32, 32, 3]),
        "probabilities": ("float32", [-1, 2]),
    }
    assert response.model_spec.version.value == 2
    models = model_service_pb2_grpc.ModelServiceStub(channel)
    status = models.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "catdog"}), timeout=60
    )
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (2, available),
        (1, available),
    ]
    one = get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "catdog"})
    one.model_spec.version.value = 1
    assert [s.version for s in models.GetModelStatus(one).model_version_status] == [1]


def _two_inputs() -> Message:
    request = predict_request("image_bytes", images(1))
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(pixels(images(1))))
    return request


def _short_content() -> Message:
    request = predict_request("images", pixels(images(1)))
    request.inputs["images"].tensor_content = request.inputs["images"].tensor_content[:-4]
    return request


def _filtered() -> Message:
    request = predict_request("image_bytes", images(1))
    request.output_filter.append("logits")
    return request


def _scalar_of(files: list[bytes]) -> Message:
    request = predict_request("image_bytes", files)
    del request.inputs["image_bytes"].tensor_shape.dim[:]
    return request


def _classify(features: dict[str, list[bytes]]) -> Message:
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = "catdog"
    example = request.input.example_list.examples.add()
    for name, values in features.items():
        example.features.feature[name].bytes_list.value.extend(values)
    return request


def _pixels_request(shape: list[int], **values: object) -> Message:
    request = predict_pb2.PredictRequest(model_spec={"name": "catdog"})
    tensor = request.inputs["images"]
    tensor.dtype = tf.float32.as_datatype_enum
    tensor.tensor_shape.dim.extend([tensor.tensor_shape.Dim(size=s) for s in shape])
    for field, value in values.items():
        getattr(tensor, field).extend(value)  # type: ignore[arg-type]
    return request


def _tiny_strings() -> Message:
    """70,000 empty files: 140 kB that protobuf would make ~5 MB of objects of."""
    request = predict_pb2.PredictRequest(model_spec={"name": "catdog"})
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([b""] * 70_000))
    return request


def _context_image() -> Message:
    request = classification_pb2.ClassificationRequest(model_spec={"name": "catdog"})
    given = request.input.example_list_with_context
    given.examples.add().features.feature["image_bytes"].bytes_list.value.extend(images(1))
    given.context.features.feature["photo"].bytes_list.value.extend(images(1))
    return request


BAD: dict[str, tuple[str, Callable[[], Message], grpc.StatusCode, str, str]] = {
    "many tiny fields": (
        "Predict",
        _tiny_strings,
        grpc.StatusCode.INVALID_ARGUMENT,
        "413",
        "more than 65536 fields",
    ),
    "no pixels in a huge shape": (
        "Predict",
        lambda: _pixels_request([1, 0, 2**62, 2**62]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "expected [N, 32, 32, 3]",
    ),
    "one image's shape": (
        "Predict",
        lambda: _pixels_request([32, 32, 3], float_val=[0.5]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "expected [N, 32, 32, 3]",
    ),
    "one value for a huge shape": (
        "Predict",
        lambda: _pixels_request([32, 3276, 3200, 3], float_val=[0.5]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "expected [N, 32, 32, 3]",
    ),
    "packed varints": (
        "Predict",
        lambda: _pixels_request([1, 32, 32, 3], int64_val=[1] * 70_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "413",
        "more than 65536 fields",
    ),
    "a group": (
        "Predict",
        lambda: predict_pb2.PredictRequest.FromString(b"\x9b\x06\x9c\x06"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "wire type 3",
    ),
    "values of another dtype": (
        "Predict",
        lambda: _pixels_request([1, 32, 32, 3], double_val=[0.5] * 3072),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "values in double_val",
    ),
    "a scalar of three files": (
        "Predict",
        lambda: _scalar_of(images(3)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "shape [] but 3 elements",
    ),
    "an image in the context": (
        "Classify",
        _context_image,
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "context holds bytes features (photo)",
    ),
    "another model": (
        "Predict",
        lambda: predict_request("image_bytes", images(1)).__class__(model_spec={"name": "dog"}),
        grpc.StatusCode.NOT_FOUND,
        "404",
        "no model named 'dog'",
    ),
    "another signature": (
        "Predict",
        lambda: predict_request("image_bytes", images(1), signature_name="classify"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "no signature 'classify'",
    ),
    "two inputs": ("Predict", _two_inputs, grpc.StatusCode.INVALID_ARGUMENT, "400", "give one"),
    "unknown input": (
        "Predict",
        lambda: predict_request("logits", images(1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "give one of",
    ),
    "pixels as files": (
        "Predict",
        lambda: predict_request("image_bytes", pixels(images(1))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "send pixels as images",
    ),
    "files as pixels": (
        "Predict",
        lambda: predict_request("images", images(1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "send image files as image_bytes",
    ),
    "not an image": (
        "Predict",
        lambda: predict_request("image_bytes", [test_images.text_bytes()]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "415",
        "not a recognised",
    ),
    "too many files": (
        "Predict",
        lambda: predict_request("image_bytes", images(1) * 40),
        grpc.StatusCode.INVALID_ARGUMENT,
        "413",
        "at most 32",
    ),
    "out of range": (
        "Predict",
        lambda: predict_request("images", np.full((1, 32, 32, 3), 2.0, np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "[0, 1]",
    ),
    "wrong size": (
        "Predict",
        lambda: predict_request("images", np.zeros((1, 16, 16, 3), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "32, 32, 3",
    ),
    "short tensor_content": (
        "Predict",
        _short_content,
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "needs 12288 bytes",
    ),
    "output filter": ("Predict", _filtered, grpc.StatusCode.INVALID_ARGUMENT, "400", "logits"),
    "no examples": (
        "Classify",
        lambda: classification_pb2.ClassificationRequest(model_spec={"name": "catdog"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "no examples",
    ),
    "two images in an example": (
        "Classify",
        lambda: _classify({"a": images(1), "b": images(1)}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "example 0",
    ),
    "no metadata field": (
        "GetModelMetadata",
        lambda: get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "catdog"}),
        grpc.StatusCode.INVALID_ARGUMENT,
        "400",
        "signature_def",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_requests_get_the_rest_status_as_a_grpc_code(stub: object, case: str) -> None:
    method, request, code, status, words = BAD[case]
    with pytest.raises(grpc.RpcError) as error:
        getattr(stub, method)(request(), timeout=60)
    failure = error.value
    assert failure.code() == code, failure  # type: ignore[attr-defined]
    assert words in failure.details()  # type: ignore[attr-defined]
    assert dict(failure.trailing_metadata())["catdog-http-status"] == status  # type: ignore[attr-defined]
    answer = stub.Predict(predict_request("image_bytes", images(1)), timeout=60)  # type: ignore[attr-defined]
    assert probabilities(answer).shape == (1, 2)  # and the server still serves


def test_grpc_health_knows_both_tf_serving_services(channel: grpc.Channel) -> None:
    check = health_pb2_grpc.HealthStub(channel).Check
    for name in ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
        answer = check(health_pb2.HealthCheckRequest(service=name), timeout=60)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING


def test_calls_not_served_are_unimplemented(stub: object) -> None:
    """Regress: the model is a classifier."""
    with pytest.raises(grpc.RpcError) as error:
        stub.Regress(  # type: ignore[attr-defined]
            regression_pb2.RegressionRequest(model_spec={"name": "catdog"}), timeout=60
        )
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED  # type: ignore[attr-defined]
