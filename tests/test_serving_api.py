"""The OpenAI-compatible server through the real ``openai`` client (and raw HTTP for what the
client cannot send): answers equal to lone greedy ``generate``, streaming and usage, stop
strings, image and video sources, every refused input, auth, health, the queue bound,
concurrency and client disconnects.

One in-process uvicorn server on a free loopback port serves the tiny random checkpoint
(its answers run to max_tokens with arbitrary tokens: long, multi-byte, a good test of
batching and of incremental detokenisation).
"""

import base64
import concurrent.futures
import http.client
import json
import shutil
import struct
import threading
import time
import zlib

import openai
import pytest
import requests

from helpers.media import http_server, write_video
from helpers.serving import start_server, stop_server
from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor, process_vision_info
from paddlemix_qwen25vl.demo import DEMO_IMAGE, DEMO_IMAGE_2, DEMO_QUESTION
from paddlemix_qwen25vl.serve import build_parser, create_server
from paddlemix_qwen25vl.serving.app import ServerSettings, create_app
from paddlemix_qwen25vl.serving.detokenize import IncrementalDetokenizer

KEY = "test-key"
MODEL = "tiny"
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """The allowed local media directory, holding the two demo images and a short video."""
    root = tmp_path_factory.mktemp("media")
    shutil.copy(DEMO_IMAGE, root / "demo.png")
    shutil.copy(DEMO_IMAGE_2, root / "demo2.png")
    write_video(str(root / "clip.mp4"), num_frames=8, fps=4)
    return root


@pytest.fixture(scope="module")
def server(tiny_checkpoint, media_dir):
    """(base URL, the uvicorn Server) of the test server: key set, small limits."""
    args = build_parser().parse_args([
        "--model_path", tiny_checkpoint, "--served_model_name", MODEL, "--port", "0", "--dtype", "float32",
        "--api_key", KEY, "--allowed_local_media_path", str(media_dir), "--max_batch_size", "4", "--max_queue", "4",
        "--max_image_pixels", "1000000", "--max_media_bytes", "2000000", "--max_prompt_tokens", "400",
        "--max_completion_tokens", "256", "--max_request_bytes", "3000000", "--log_level", "warning",
    ])
    uvicorn_server = create_server(args)
    yield start_server(uvicorn_server), uvicorn_server
    stop_server(uvicorn_server)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def lone(tiny_checkpoint):
    """lone(messages, max_new_tokens) -> (text, token count, prompt tokens) from model.generate alone,
    with the messages in the library's format (as the inference scripts build them)."""
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, dtype="float32")
    processor = Qwen2_5_VLProcessor.from_pretrained(tiny_checkpoint)

    def run(messages, max_new_tokens=MAX_TOKENS):
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        images, videos, kwargs = process_vision_info(messages, return_video_kwargs=True)
        inputs = processor(text=[text], images=images, videos=videos, fps=kwargs.get("fps"), return_tensors="pd")
        tokens, _ = model.generate(**inputs, max_new_tokens=max_new_tokens, decode_strategy="greedy_search")
        ids = tokens.numpy()[0].tolist()
        return processor.decode(ids, skip_special_tokens=True), len(ids), int(inputs["input_ids"].shape[1])

    return run


def data_url(path, mime="image/png"):
    with open(path, "rb") as f:
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode()


def image_message(url, question=DEMO_QUESTION):
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]}]


def library_message(path, question=DEMO_QUESTION):
    return [{"role": "user", "content": [{"type": "image", "image": path}, {"type": "text", "text": question}]}]


def chat(client, messages, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                          max_tokens=kwargs.pop("max_tokens", MAX_TOKENS), **kwargs)


def post(server, body, key=KEY, raw=None):
    """A raw POST to /v1/chat/completions (JSON of ``body``, or the bytes ``raw``)."""
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    return requests.post(server[0] + "/v1/chat/completions", data=raw if raw is not None else json.dumps(body),
                         headers=headers, timeout=60)


@pytest.mark.parametrize("stop", [[], ["end"], ["🦜"]])
def test_incremental_detokenizer_never_splits_a_character(processor, stop):
    text = "naïve 🙂🦜 語 end"  # the emoji and 語 are split over byte-level tokens
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    detokenizer = IncrementalDetokenizer(processor.tokenizer, stop)
    pieces = [detokenizer.push(i) for i in ids] + [detokenizer.finish()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == (text[: text.index(stop[0])] if stop else text)
    assert detokenizer.stopped == bool(stop)


def test_models_health_and_page(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    health = requests.get(server[0] + "/health")  # no key needed
    assert health.status_code == 200 and health.json()["status"] == "ok" and "active" in health.json()["engine"]
    assert set(health.json()["engine"]["vision_cache"]) == {"hits", "misses", "entries", "bytes"}  # on by default
    page = requests.get(server[0] + "/", auth=("any user", KEY))  # a browser sends the key as Basic credentials
    assert page.status_code == 200 and "chat.js" in page.text
    assert "/v1/chat/completions" in requests.get(server[0] + "/static/chat.js", auth=("", KEY)).text
    assert requests.get(server[0] + "/", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200


def test_auth(server):
    bad = openai.OpenAI(base_url=server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    answer = post(server, {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, key="wrong")
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    assert requests.get(server[0] + "/v1/models").status_code == 401
    assert requests.get(server[0] + "/v1/models", auth=("user", KEY)).json()["data"][0]["id"] == MODEL


@pytest.mark.parametrize("path", ["/", "/static/chat.js", "/static/index.html"])
@pytest.mark.parametrize("authorization", [None, "Basic " + base64.b64encode(b"user:wrong").decode(), "Basic %%%",
                                           "Basic " + base64.b64encode(KEY.encode()).decode(), f"Bearer {KEY}x", KEY])
def test_page_needs_the_key(server, path, authorization):
    """With --api_key the page and its files need the key too; the browser is asked for it (Basic challenge)."""
    answer = requests.get(server[0] + path, headers={"Authorization": authorization} if authorization else {})
    assert answer.status_code == 401 and answer.json()["error"]["code"] == "invalid_api_key"
    assert answer.headers["WWW-Authenticate"].startswith("Basic ")


def test_answer_equals_lone_generate(client, lone):
    reply = chat(client, image_message(data_url(DEMO_IMAGE)))
    text, count, prompt_tokens = lone(library_message(DEMO_IMAGE))
    assert reply.choices[0].message.content == text and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == ("length" if count == MAX_TOKENS else "stop")
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (prompt_tokens, count)
    assert reply.usage.total_tokens == prompt_tokens + count and reply.model == MODEL


def test_next_turn_reuses_the_image_features(server, client, lone):
    """A follow-up turn re-sends the image (the API is stateless): the server's vision cache
    serves its features (one more hit, no new entry) and the answer is the lone one."""
    first = chat(client, image_message(data_url(DEMO_IMAGE))).choices[0].message.content
    before = requests.get(server[0] + "/health").json()["engine"]["vision_cache"]
    follow_up = image_message(data_url(DEMO_IMAGE)) + [{"role": "assistant", "content": first},
                                                       {"role": "user", "content": "And the colours?"}]
    reply = chat(client, follow_up)
    after = requests.get(server[0] + "/health").json()["engine"]["vision_cache"]
    library_turns = library_message(DEMO_IMAGE) + follow_up[1:]
    assert reply.choices[0].message.content == lone(library_turns)[0]
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"]
    assert after["entries"] == before["entries"]


def test_streaming_and_usage(client, lone):
    chunks = list(chat(client, image_message(data_url(DEMO_IMAGE)), stream=True, stream_options={"include_usage": True}))
    text, count, prompt_tokens = lone(library_message(DEMO_IMAGE))
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert "".join(pieces) == text  # the pieces never split a character: they join to the whole text
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length" if count == MAX_TOKENS else "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == count
    assert chunks[-1].usage.prompt_tokens == prompt_tokens
    assert all(c.usage is None for c in chunks[:-1])
    plain = list(chat(client, image_message(data_url(DEMO_IMAGE)), stream=True))  # no usage chunk unless asked
    assert all(c.choices for c in plain) and "".join(c.choices[0].delta.content or "" for c in plain) == text


def test_stop_strings(client, lone):
    text, _, _ = lone(library_message(DEMO_IMAGE))
    stop = text[5:8]
    expected = text[: text.index(stop)]
    reply = chat(client, image_message(data_url(DEMO_IMAGE)), stop=[stop, "never-there"])
    assert reply.choices[0].message.content == expected and reply.choices[0].finish_reason == "stop"
    streamed = chat(client, image_message(data_url(DEMO_IMAGE)), stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_seeded_sampling_is_reproducible(client):
    def sample(seed):
        reply = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}],
                                               temperature=1.0, top_p=0.9, seed=seed, max_tokens=12)
        return reply.choices[0].message.content

    assert sample(7) == sample(7) != sample(8)


def test_image_and_video_sources(client, lone, media_dir):
    expected = lone(library_message(DEMO_IMAGE_2))[0]
    with open(DEMO_IMAGE_2, "rb") as f, http_server({"/demo2.png": (200, f.read())}, timeout=60) as base:
        assert chat(client, image_message(base + "/demo2.png")).choices[0].message.content == expected
        with pytest.raises(openai.BadRequestError, match="HTTP 404"):
            chat(client, image_message(base + "/missing.png"))
    assert chat(client, image_message(str(media_dir / "demo2.png"))).choices[0].message.content == expected
    assert chat(client, image_message("file://" + str(media_dir / "demo2.png"))).choices[0].message.content == expected
    with pytest.raises(openai.BadRequestError, match="outside the allowed media directory"):
        chat(client, image_message(DEMO_IMAGE))
    with pytest.raises(openai.BadRequestError, match="outside the allowed media directory"):
        chat(client, image_message(str(media_dir / ".." / "x.png")))
    video = str(media_dir / "clip.mp4")
    expected = lone([{"role": "user", "content": [{"type": "video", "video": video, "max_frames": 32},
                                                  {"type": "text", "text": "Describe this video."}]}])[0]
    for url in (video, data_url(video, "video/mp4")):
        messages = [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": url}},
                                                 {"type": "text", "text": "Describe this video."}]}]
        assert chat(client, messages).choices[0].message.content == expected


def _png_header(width, height):
    """A PNG whose header declares width x height, with no pixel data: only a header check can refuse it cheaply."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _b64(data, mime="image/png"):
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def _user(content):
    return {"model": MODEL, "max_tokens": 4, "messages": [{"role": "user", "content": content}]}


def _image(url):
    return _user([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "?"}])


BAD_REQUESTS = {
    # name: (body or raw bytes, status, code)
    "malformed_json": (b'{"model": "tiny", "messages": [', 400, "invalid_json"),
    "not_an_object": (b"[1, 2]", 400, "invalid_json"),
    "no_messages": ({"model": MODEL, "messages": []}, 400, "invalid_value"),
    "wrong_type_max_tokens": ({**_user("hi"), "max_tokens": "5"}, 400, "invalid_value"),
    "wrong_type_content": (_user(5), 400, "invalid_value"),
    "wrong_type_stream": ({**_user("hi"), "stream": "yes"}, 400, "invalid_value"),
    "unknown_part": (_user([{"type": "audio", "audio": "x"}]), 400, "invalid_value"),
    "bad_role": ({"model": MODEL, "messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_value"),
    "n_2": ({**_user("hi"), "n": 2}, 400, "unsupported_parameter"),
    "tools": ({**_user("hi"), "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "unsupported_parameter"),
    "five_stops": ({**_user("hi"), "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value"),
    "temperature_high": ({**_user("hi"), "temperature": 3}, 400, "invalid_value"),
    "negative_seed": ({**_user("hi"), "seed": -1}, 400, "invalid_value"),
    "max_tokens_over_limit": ({**_user("hi"), "max_tokens": 257}, 400, "invalid_value"),
    "unknown_model": ({**_user("hi"), "model": "gpt-9"}, 404, "model_not_found"),
    "broken_base64": (_image("data:image/png;base64,iVBORw0KGgo!!!"), 400, "invalid_media"),
    "not_base64_url": (_image("data:image/png,rawbytes"), 400, "invalid_media"),
    "non_image_bytes": (_image(_b64(b"this is not an image at all")), 400, "invalid_media"),
    "truncated_png": (_image(_b64(_png_header(64, 64))), 400, "invalid_media"),
    "200_megapixels": (_image(_b64(_png_header(20000, 10000))), 413, "media_too_large"),
    "over_pixel_limit": (_image(_b64(_png_header(2000, 1000))), 413, "media_too_large"),
    "over_byte_limit": (_image(_b64(b"\0" * 2_100_000)), 413, "media_too_large"),
    "too_many_images": (_user([{"type": "image_url", "image_url": {"url": "x"}}] * 9), 413, "too_many_media"),
    "unsupported_scheme": (_image("ftp://127.0.0.1/x.png"), 400, "invalid_media"),
    "over_long_prompt": (_user("word " * 1000), 400, "context_length_exceeded"),
    "body_too_large": (b"{" + b" " * 3_000_001 + b"}", 413, "request_too_large"),
    "broken_video": (_user([{"type": "video_url", "video_url": {"url": _b64(b"not a video", "video/mp4")}}]), 400, "invalid_media"),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_request_is_a_clear_4xx(server, name):
    body, status, code = BAD_REQUESTS[name]
    answer = post(server, None, raw=body) if isinstance(body, bytes) else post(server, body)
    error = answer.json()["error"]
    assert (answer.status_code, error["code"]) == (status, code), error
    assert error["message"] and error["type"]


def test_serving_goes_on_after_bad_requests(client, lone):
    text = lone(library_message(DEMO_IMAGE))[0]
    assert chat(client, image_message(data_url(DEMO_IMAGE))).choices[0].message.content == text


def _conversations():
    """Four different requests (two images, text only, a two-turn chat) with different lengths."""
    return [
        (image_message(data_url(DEMO_IMAGE)), library_message(DEMO_IMAGE), 20),
        (image_message(data_url(DEMO_IMAGE_2), "What colour is the shape?"),
         library_message(DEMO_IMAGE_2, "What colour is the shape?"), 12),
        ([{"role": "user", "content": "Tell me a story."}], [{"role": "user", "content": "Tell me a story."}], 24),
        ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
          {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Again?"}], 16),
    ]


def test_concurrent_answers_equal_lone_answers(client, lone):
    cases = _conversations()
    expected = [lone(library, n)[0] for _, library, n in cases]
    with concurrent.futures.ThreadPoolExecutor(len(cases)) as pool:
        replies = list(pool.map(lambda case: chat(client, case[0], max_tokens=case[2]), cases))
    assert [r.choices[0].message.content for r in replies] == expected


def test_queue_full_is_429_and_serving_goes_on(client, server):
    def one(_):
        try:
            return chat(client, [{"role": "user", "content": "Tell me a story."}], max_tokens=48).choices[0].finish_reason
        except openai.RateLimitError as err:
            assert err.status_code == 429 and "busy" in err.message
            return 429

    with concurrent.futures.ThreadPoolExecutor(12) as pool:  # 4 decoding + 4 waiting fit, the rest get 429
        results = list(pool.map(one, range(12)))
    assert 429 in results and "length" in results
    assert chat(client, [{"role": "user", "content": "Hi"}], max_tokens=2).choices[0].finish_reason == "length"


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "plain"])
def test_client_disconnect_cancels_its_request(server, stream):
    engine = server[1].config.app.state.server.served.engine
    submitted = []
    original = engine.submit

    def capture(inputs, params):
        submitted.append(original(inputs, params))
        return submitted[-1]

    engine.submit = capture
    try:
        host, port = server[0][len("http://"):].split(":")
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        body = json.dumps({**_user("Tell me a story."), "max_tokens": 256, "stream": stream, "temperature": 0})
        connection.request("POST", "/v1/chat/completions", body=body,
                           headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
        if stream:
            response = connection.getresponse()
            assert response.status == 200 and response.readline().startswith(b"data: ")
        else:  # leave once the request is running
            deadline = time.time() + 30
            while not (submitted and submitted[0].output_tokens):
                assert time.time() < deadline, "the request did not start"
                time.sleep(0.01)
        connection.sock.shutdown(2)
        connection.close()
        deadline = time.time() + 30
        while not (submitted and submitted[0].done):
            assert time.time() < deadline, "the engine request did not finish after the client left"
            time.sleep(0.05)
    finally:
        engine.submit = original
    assert submitted[0].finish_reason == "cancelled" and len(submitted[0].output_tokens) < 256


def test_health_and_api_answer_503_while_loading():
    import uvicorn

    release = threading.Event()

    def load():
        release.wait(30)
        raise RuntimeError("no weights here")

    app = create_app(ServerSettings(model_name=MODEL), load)
    uvicorn_server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    url = start_server(uvicorn_server, load_timeout=None)
    try:
        health = requests.get(url + "/health")
        assert health.status_code == 503 and health.json()["error"]["code"] == "model_loading"
        assert requests.post(url + "/v1/chat/completions", json=_user("hi")).status_code == 503
        release.set()
        deadline = time.time() + 10
        while requests.get(url + "/health").json()["error"]["code"] != "model_load_failed":
            assert time.time() < deadline
            time.sleep(0.05)
        assert "no weights here" in requests.get(url + "/health").json()["error"]["message"]
    finally:
        release.set()
        stop_server(uvicorn_server)


def test_server_takes_the_scripts_model_flags(tiny_checkpoint, monkeypatch):
    """--quant_type (a flag shared with the inference scripts): the server runs an int8 model, and its
    answer is that model's own."""
    from paddlemix_qwen25vl.quantization import WeightOnlyLinear

    served_models = []
    load = Qwen2_5_VLForConditionalGeneration.from_pretrained.__func__

    def recording_load(cls, *args, **kwargs):
        served_models.append(load(cls, *args, **kwargs))
        return served_models[-1]

    monkeypatch.setattr(Qwen2_5_VLForConditionalGeneration, "from_pretrained", classmethod(recording_load))
    args = build_parser().parse_args([
        "--model_path", tiny_checkpoint, "--served_model_name", MODEL, "--port", "0", "--quant_type", "weight_only_int8",
        "--log_level", "warning",
    ])
    uvicorn_server = create_server(args)
    url = start_server(uvicorn_server)
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)
        served = chat(client, image_message(data_url(DEMO_IMAGE)))
    finally:
        stop_server(uvicorn_server)
    quantised = [layer for layer in served_models[0].sublayers() if isinstance(layer, WeightOnlyLinear)]
    assert quantised and {layer.kind for layer in quantised} == {"weight_only_int8"}
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint, quant_type="weight_only_int8")
    processor = Qwen2_5_VLProcessor.from_pretrained(tiny_checkpoint)
    messages = library_message(DEMO_IMAGE)
    images, _, _ = process_vision_info(messages, return_video_kwargs=True)
    inputs = processor(text=[processor.apply_chat_template(messages, add_generation_prompt=True)], images=images,
                       return_tensors="pd")
    tokens, _ = model.generate(**inputs, max_new_tokens=MAX_TOKENS, decode_strategy="greedy_search")
    assert served.choices[0].message.content == processor.decode(tokens.numpy()[0].tolist(), skip_special_tokens=True)
