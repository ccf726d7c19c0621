"""JSON bodies parsed once, number tensors straight into arrays (``app.protocols.numbers``).

``read`` makes an array of a tensor only when it is a rectangular tensor of JSON numbers,
and reads it as pydantic and numpy would; ``read_json`` answers every body, good or bad,
as it does with the fast path off: the same arrays, or the same error.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import pytest
from fastapi import HTTPException
from pydantic import BaseModel

from app.protocols import numbers
from app.protocols.oip import routes as oip
from app.protocols.oip import schemas as oip_schemas
from app.protocols.tfserving import routes as tfserving


@pytest.fixture(autouse=True)
def small_tensors_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numbers, "MIN_BYTES", 1)


def body_of(tensor_text: str, key: str = "instances") -> bytes:
    return f'{{"signature_name": "serving_default", "{key}": {tensor_text}}}'.encode()


def arrays_in(value: object) -> list[np.ndarray]:
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    return [a for item in value for a in arrays_in(item)] if isinstance(value, list) else []


def taken(body: bytes) -> list[np.ndarray]:
    return arrays_in(numbers.read(body))


RNG = np.random.default_rng(7)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(RNG.random((4, 5, 3), dtype=np.float32).tolist()),
        json.dumps(RNG.integers(-300, 300, (2, 3, 4, 2)).tolist()),
        json.dumps(RNG.random((3, 2), dtype=np.float32).tolist(), indent=2),
        "[-1.5E-3, 2e+2, -0, 0.0, 1e-320, 17, 9007199254740991]",
        "[[[[[0.25, 0.5]]]]]",
        "[ [ 1 ,2 ] ,\n\t[3, 4 ] ]",
        "[7]",
    ],
    ids=["floats", "ints", "indented", "number forms", "deep", "spaces", "one number"],
)
def test_read_reads_what_json_and_numpy_read(text: str) -> None:
    [array] = taken(body_of(text))
    expected = np.asarray(json.loads(text), dtype=np.float64).astype(np.float32)
    assert array.dtype == np.float32
    assert array.shape == expected.shape
    np.testing.assert_array_equal(array, expected)


@pytest.mark.parametrize(
    "text",
    [
        "[[1, 2], [3], [4, 5, 6]]",  # ragged, as many numbers as a 3x2 shape
        "[[1, 2], [3, [4]]]",  # an array where a number belongs
        "[[1, 2], 3]",  # a number where an array belongs
        "[[1, 2], []]",
        "[[1], []]",  # an empty array, commas alike
        "[[], []]",
        "[]",
        "[[[1], [2]], [[3], [4]], [[5, 6]]]",
        "[[[1], [2]], [[[1, 2]]]]",  # first elements, length and count as a 2x2x1
        "[1, \"2\"]",
        "[1, true]",
        "[1, null]",
        "[1, {\"a\": 1}]",
        "[1e400]",  # not a float64
        "[01]",  # not JSON numbers
        "[1.]",
        "[.5]",
        "[+1]",
        "[1e]",
        "[1-2]",
        "[NaN]",
        "[1, 2,]",
        "[1 2]",
        "[123456789012345678901234567890]",  # an integer past 64 bits
        "[0, 18014549907079169]",  # past 2**53: numpy rounds the int64 once, not twice
        "[3.4e38]",
        "[" + "0, " * 600 + "1" + "0" * 1000 + "e-1000]",  # pydantic refuses past 4,300 digits
    ],
)  # fmt: skip
def test_read_leaves_anything_else_to_pydantic(text: str) -> None:
    assert taken(body_of(text)) == []


def nested(rng: random.Random, depth: int) -> Any:
    """A random nested list of numbers, often ragged: each list draws its own length and
    each element whether it goes deeper."""
    if depth == 0 or rng.random() < 0.1:
        return rng.choice([0, 1, 0.5, -2, 1e-3])
    return [
        nested(rng, depth - 1 if rng.random() < 0.9 else depth) for _ in range(rng.randint(1, 3))
    ]


def rectangular(value: Any) -> np.ndarray | None:
    """``value`` as an array if numpy finds it rectangular and all numbers."""
    try:
        array = np.asarray(value, dtype=np.float64)
    except ValueError:
        return None
    return array if array.ndim else None


def test_read_takes_exactly_the_rectangular_ones_of_random_tensors() -> None:
    rng = random.Random(11)
    seen = {True: 0, False: 0}
    for _ in range(3000):
        value = nested(rng, rng.randint(1, 4))
        if not isinstance(value, list):
            continue
        for tail in ["", ', "x": [[1]]']:  # and with arrays after it
            body = f'{{"instances": {json.dumps(value)}{tail}}}'.encode()
            expected = rectangular(value)
            values = numbers.read(body)
            assert isinstance(values, dict)
            got = arrays_in(values["instances"])
            seen[expected is not None] += 1
            if expected is None:
                assert got == [], value
            else:
                [array] = got
                np.testing.assert_array_equal(array, expected.astype(np.float32))
    assert min(seen.values()) > 500  # both kinds were tried often


def test_flat_data_of_a_million_numbers_is_taken() -> None:
    """OIP clients send ``data`` flat: one array of every number."""
    values = np.random.default_rng(5).random(1_000_000, dtype=np.float32)
    [array] = taken(body_of(json.dumps(values.tolist()), "data"))
    np.testing.assert_array_equal(array, values)


def test_more_dimensions_than_most_rank_stay_lists() -> None:
    assert taken(body_of("[" * 9 + "1" + "]" * 9)) == []


def test_whitespace_around_the_key_and_brackets_is_read_past() -> None:
    body = b'{"instances"  \n\t:\r\n  [ \n [ 1 , 2 ] ]}'
    [array] = taken(body)
    np.testing.assert_array_equal(array, [[1, 2]])


def test_text_in_a_string_is_never_taken() -> None:
    body = (
        b'{"note": "\\"instances\\": [1, 2] and [,]", '
        b'"inputs": {"images" : [[1, 2], [3, 4]]}, "x\\"instances": [5, 6]}'
    )
    values = numbers.read(body)
    assert isinstance(values, dict)
    assert values["note"] == '"instances": [1, 2] and [,]'
    np.testing.assert_array_equal(values["inputs"]["images"], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(values['x"instances'], [5, 6])


@pytest.mark.parametrize(
    "body",
    [
        b'{"instances": [{"b64": "AAAA"}, {"b64": "AAAA"}]}',
        b'{"inputs": [{"name": "image_bytes", "data": ["AAAA"]}]}',
        b'{"instances": [[["AAAA"]]]}',
        b'{"instances": [ ]}',
    ],
)
def test_a_body_of_images_is_plain_values(body: bytes) -> None:
    assert numbers.read(body) == json.loads(body)


# ---------------------------------------------------------------- read_json


def read(model: type[BaseModel], body: bytes, fast: bool) -> object:
    """What ``read_json`` gives: the request as plain values, or (status, detail)."""
    pack = tfserving._pack if model is tfserving.PredictRequest else oip._pack  # noqa: SLF001
    reading = numbers.Reading(10**9, pack, 4096, fast)
    try:
        return plain(numbers.read_json(model, body, reading))
    except HTTPException as exc:
        return exc.status_code, exc.detail


def plain(value: Any) -> Any:
    """A request as nested lists, dicts and ("array", dtype, shape, values)."""
    if isinstance(value, BaseModel):
        return plain(value.__dict__)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, np.ndarray):
        return ("array", str(value.dtype), value.shape, value.tobytes())
    return value


def oip_body(tensor_text: str) -> bytes:
    return (
        '{"inputs": [{"name": "images", "shape": [2, 3, 3, 3], "datatype": "FP32", '
        f'"data": {tensor_text}}}], "outputs": [{{"name": "probabilities"}}]}}'
    ).encode()


def tensors() -> list[str]:
    rng = np.random.default_rng(1)
    return [
        json.dumps(rng.random((2, 3, 3, 3), dtype=np.float32).tolist()),
        json.dumps(rng.integers(0, 2, (2, 3, 3, 3)).tolist(), indent=1),
    ]


def mutations(text: str, count: int, seed: int) -> list[str]:
    """``text`` with one character deleted, replaced or inserted, ``count`` ways."""
    rng = random.Random(seed)
    alphabet = '[],0123456789.-+eE "tn{}'
    found = []
    for _ in range(count):
        at = rng.randrange(len(text))
        how = rng.choice(["delete", "replace", "insert"])
        if how == "delete":
            found.append(text[:at] + text[at + 1 :])
        elif how == "replace":
            found.append(text[:at] + rng.choice(alphabet) + text[at + 1 :])
        else:
            found.append(text[:at] + rng.choice(alphabet) + text[at:])
    return found


BODIES = [
    (model, make(text))
    for model, make in [
        (tfserving.PredictRequest, body_of),
        (tfserving.PredictRequest, lambda t: body_of(t, "inputs")),
        (tfserving.PredictRequest, lambda t: f'{{"inputs": {{"images": {t}}}}}'.encode()),
        (tfserving.PredictRequest, lambda t: f'{{"instances": [{{"images": {t}}}]}}'.encode()),
        (oip_schemas.InferRequest, oip_body),
    ]
    for number, tensor in enumerate(tensors())
    for text in [tensor, *mutations(tensor, 60, seed=number)]
]


@pytest.mark.parametrize(("model", "body"), BODIES)
def test_read_json_answers_as_it_does_without_the_fast_path(
    model: type[BaseModel], body: bytes
) -> None:
    assert read(model, body, fast=True) == read(model, body, fast=False)


@pytest.mark.parametrize(
    "number",
    ["1" + "0" * 4301 + "e-4302", "18014549907079169", "-18014549907079169"],
    ids=["4,302 digits", "past 2**53", "past -2**53"],
)
@pytest.mark.parametrize("model", [tfserving.PredictRequest, oip_schemas.InferRequest])
def test_numbers_pydantic_reads_its_own_way_answer_the_same(
    model: type[BaseModel], number: str
) -> None:
    """Found by an attacker's probe: pydantic refuses a number of more than 4,300 digits
    that simdjson reads, and numpy rounds an integer past 2**53 straight to float32."""
    zeros = json.dumps(np.zeros((2, 32, 32, 3), dtype=int).tolist())
    text = zeros.replace("0", number, 2).replace(number, "0", 1)  # the second number
    assert text.startswith(f"[[[[0, {number}, 0]")
    shape = '"shape": [2, 32, 32, 3]'
    body = oip_body(text).replace(b'"shape": [2, 3, 3, 3]', shape.encode())
    body = body if model is oip_schemas.InferRequest else body_of(text)
    assert read(model, body, fast=True) == read(model, body, fast=False)


def test_the_fast_path_takes_the_tensors_of_every_form() -> None:
    """The comparison above would pass with the fast path never taken: it is taken."""
    [tensor, _] = tensors()
    for model, body in BODIES:
        if tensor.encode() in body:
            assert taken(body), body[:60]
            assert read(model, body, fast=True) == read(model, body, fast=False)


def test_a_body_of_two_images_at_224_reads_as_without_the_fast_path() -> None:
    pixels = np.random.default_rng(3).random((2, 224, 224, 3), dtype=np.float32)
    body = json.dumps({"instances": pixels.tolist()}).encode()
    answer = read(tfserving.PredictRequest, body, fast=True)
    assert answer == read(tfserving.PredictRequest, body, fast=False)
    assert answer["instances"] == ("array", "float32", (2, 224, 224, 3), pixels.tobytes())
