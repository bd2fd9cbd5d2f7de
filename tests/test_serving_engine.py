"""The serving engine: batched answers equal lone ``generate`` answers; requests join, leave, fail alone."""

import ctypes
import os
import time

import numpy as np
import paddle
import pytest
from PIL import Image

from paddlemix_qwen25vl import Qwen2_5_VLForConditionalGeneration, runtime
from paddlemix_qwen25vl.cache import BatchKVCache, KVCache
from paddlemix_qwen25vl.serving import Engine, QueueFull, SamplingParams, VisionFeatureCache

QUESTIONS = ["Hi", "Describe this picture in a few words, please.", "What colour is it?", "Count to ten, slowly and clearly."]


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(tiny_checkpoint)


def conversation(processor, question, image_side=None):
    """The processor's inputs for one user turn, with an ``image_side`` square image when given."""
    content = [{"type": "text", "text": question}]
    images = None
    if image_side:
        pixels = np.random.default_rng(image_side).integers(0, 256, (image_side, image_side, 3), dtype=np.uint8)
        images = [Image.fromarray(pixels)]
        content.insert(0, {"type": "image"})
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    return dict(processor(text=prompt, images=images))


def requests(processor):
    sides = [None, 56, 84, None]
    return [conversation(processor, q, s) for q, s in zip(QUESTIONS, sides)]


def lone_answer(model, inputs, max_new_tokens):
    """``model.generate`` greedy on one request, without the eos token that ends it."""
    eos = list(model.generation_config.eos_token_id)
    tokens, _ = model.generate(**inputs, max_new_tokens=max_new_tokens, decode_strategy="greedy_search",
                               repetition_penalty=1.0, min_new_tokens=0, eos_token_id=eos)
    tokens = tokens[0].tolist()
    return tokens[:-1] if tokens[-1] in eos else tokens


@pytest.fixture
def engine(model):
    engine = Engine(model, max_batch_size=4, max_queue=8)
    engine.start()
    yield engine
    engine.stop()


def test_batch_cache_rows_join_and_leave():
    """Every row of a BatchKVCache reads back exactly its own keys and values through joins
    (shorter and longer than the batch), decode steps, leaves and regrowth."""
    rng = np.random.default_rng(0)
    layers, shape = 2, (2, 4)  # KVH, D
    cache, own = BatchKVCache(layers, max_rows=3), []  # own[slot][layer] = (keys, values) [L, KVH, D]

    def add(length):
        row = KVCache(layers, capacity=length)
        data = [[rng.standard_normal((length, *shape)).astype("float32") for _ in "kv"] for _ in range(layers)]
        for layer, (k, v) in enumerate(data):
            row.update(layer, paddle.to_tensor(k[None]), paddle.to_tensor(v[None]))
        assert cache.add_row(row) == len(own)
        own.append(data)

    def step(times=1):
        for _ in range(times):
            one_step()

    def one_step():  # as the engine's step: room first, then the mask, then every layer's write
        cache.reserve(new_tokens=1)
        mask = cache.attention_mask(new_tokens=1)
        for layer in range(layers):
            new = [rng.standard_normal((len(own), 1, *shape)).astype("float32") for _ in "kv"]
            keys, values = cache.update(layer, *map(paddle.to_tensor, new))
            assert keys.shape[:2] == [len(own), cache.end + (layer < layers - 1)]
            assert mask is None or mask.shape[1] == keys.shape[1]  # the step's mask covers the keys it reads
            for b in range(len(own)):
                own[b][layer] = [np.concatenate([old, fresh[b]]) for old, fresh in zip(own[b][layer], new)]

    def remove(slot):
        cache.remove_row(slot)
        last = own.pop()
        if slot < len(own):
            own[slot] = last

    def check():
        mask = cache.attention_mask(new_tokens=0)
        for b, data in enumerate(own):
            pad = cache.pads[b]
            assert cache.row_length(b) == len(data[0][0])
            if mask is not None:
                assert (mask[b] == (np.arange(cache.end) >= pad)).all()
            for layer, (k, v) in enumerate(data):
                np.testing.assert_array_equal(cache.keys[layer][b, pad:cache.end].numpy(), k)
                np.testing.assert_array_equal(cache.values[layer][b, pad:cache.end].numpy(), v)

    actions = ["add 5", "step", "add 9", "step", "step", "add 2", "remove 0", "step", "add 40", "step", "remove 2",
               "step 45", "remove 0", "remove 0", "add 3", "step"]  # step 45: past the capacity, the shared padding dropped
    for action in actions:
        name, *arg = action.split()
        capacity = cache.capacity
        {"add": add, "step": step, "remove": remove}[name](*map(int, arg))
        check()
        if action == "step 45":
            assert cache.capacity > capacity and min(cache.pads) == 0
    assert cache.attention_mask() is None  # one row: no padding
    remove(0)
    assert cache.rows == 0 and cache.capacity == 0  # the memory is given back


def test_batched_greedy_equals_lone_generate(model, processor, engine):
    inputs = requests(processor)
    budgets = [12, 20, 7, 16]
    lone = [lone_answer(model, x, n) for x, n in zip(inputs, budgets)]
    submitted = [engine.submit(x, SamplingParams(max_new_tokens=n)) for x, n in zip(inputs, budgets)]
    answers = [list(r.tokens()) for r in submitted]
    assert answers == lone
    assert engine.stats()["steps"] < sum(budgets) - len(budgets)  # the rows shared decode steps
    for request, answer, budget in zip(submitted, answers, budgets):
        assert request.finish_reason == ("length" if len(answer) == budget else "stop")
        assert request.prompt_tokens > 0


def test_demo_model_batched_equals_lone(demo_env):
    """The trained demo model, its eos ids dropped so that every answer runs its whole budget:
    images of two sizes and text, batched, equal their lone answers."""
    from paddlemix_qwen25vl import Qwen2_5_VLProcessor
    from paddlemix_qwen25vl.demo import DEMO_IMAGE, DEMO_IMAGE_2, DEMO_QUESTION, demo_checkpoint

    path = demo_checkpoint(demo_env["PADDLEMIX_DEMO_DIR"])
    demo, processor = Qwen2_5_VLForConditionalGeneration.from_pretrained(path), Qwen2_5_VLProcessor.from_pretrained(path)
    demo.generation_config.eos_token_id = []
    prompts = [(DEMO_QUESTION, DEMO_IMAGE), ("Hello, who are you?", None), ("What colour is the shape?", DEMO_IMAGE_2)]
    inputs = []
    for question, image in prompts:
        content = [{"type": "text", "text": question}] if image is None else [{"type": "image"}, {"type": "text", "text": question}]
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs.append(dict(processor(text=prompt, images=None if image is None else [Image.open(image).convert("RGB")])))
    lone = [lone_answer(demo, x, 24) for x in inputs]
    engine = Engine(demo)
    engine.start()
    try:
        submitted = [engine.submit(x, SamplingParams(max_new_tokens=24)) for x in inputs]
        assert [list(r.tokens()) for r in submitted] == lone
    finally:
        engine.stop()


def test_join_mid_decode_and_async(model, processor, engine):
    import asyncio

    first, late = requests(processor)[1], requests(processor)[2]
    running = engine.submit(first, SamplingParams(max_new_tokens=24))
    stream = running.tokens()
    head = [next(stream) for _ in range(3)]  # decoding has started

    async def read_late():
        request = engine.submit(late, SamplingParams(max_new_tokens=10))
        ticks = 0

        async def tick():  # runs only if waiting for tokens leaves the event loop free
            nonlocal ticks
            while not request.done:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.create_task(tick())
        tokens = [t async for t in request.atokens()]
        await ticker
        return tokens, ticks

    tokens, ticks = asyncio.run(read_late())
    assert tokens == lone_answer(model, late, 10) and ticks > 1
    assert head + list(stream) == lone_answer(model, first, 24)


def test_cancel_frees_the_slot(processor, engine):
    request = engine.submit(requests(processor)[0], SamplingParams(max_new_tokens=2000))
    stream = request.tokens()
    next(stream)
    request.cancel()
    list(stream)
    assert request.finish_reason == "cancelled"
    deadline = time.time() + 10
    while engine.stats()["active"] and time.time() < deadline:
        time.sleep(0.01)
    assert engine.stats()["active"] == 0


IOMP = os.path.join(os.path.dirname(paddle.__file__), "libs", "libiomp5.so")


@pytest.mark.skipif(not os.path.isfile(IOMP), reason="this Paddle build ships no Intel OpenMP runtime")
def test_engine_thread_computes_with_the_process_threads(model, processor, monkeypatch):
    """OpenMP keeps its thread count per thread: the engine's own thread would run Paddle's and
    the custom operators' loops on one thread (Paddle's OMP_NUM_THREADS=1) after the model
    was loaded with two."""
    openmp = ctypes.CDLL(IOMP)
    previous = runtime.use_num_threads_in_this_thread()  # the process's count, restored below
    runtime.set_num_threads(2)
    seen = []
    forward = model.forward

    def recording_forward(*args, **kwargs):
        seen.append(openmp.omp_get_max_threads())
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", recording_forward)
    engine = Engine(model, max_batch_size=2, max_queue=2)
    engine.start()
    try:
        list(engine.submit(requests(processor)[0], SamplingParams(max_new_tokens=3)).tokens())
    finally:
        engine.stop()
        runtime.set_num_threads(previous)
    assert seen and set(seen) == {2}


def test_vision_cache_keeps_recent_features_within_its_budget():
    encoded = []

    def encode(pixels, grid_thw):  # 4 features of 4 float32 per item: 64 bytes
        encoded.append(float(pixels[0, 0]))
        return paddle.full([4, 4], float(pixels[0, 0]))

    cache = VisionFeatureCache(max_bytes=128)  # two items
    grid = np.array([[1, 4, 4]])
    a, b, c = (paddle.full([16, 8], value) for value in (1.0, 2.0, 3.0))
    first = cache.features(a, grid, encode)
    assert cache.features(paddle.full([16, 8], 1.0), grid, encode) is first  # equal pixels, not the same tensor
    cache.features(a, np.array([[1, 2, 8]]), encode)  # other grid: other key (evicts nothing yet: 2 items)
    cache.features(b, grid, encode)  # a with the first grid is least recent: dropped
    cache.features(a, grid, encode)
    assert encoded == [1.0, 1.0, 2.0, 1.0]
    assert cache.stats() == {"hits": 1, "misses": 4, "entries": 2, "bytes": 128}
    big = cache.features(c, np.array([[1, 8, 8]]), lambda pixels, grid_thw: paddle.zeros([64, 4]))
    assert big.shape == [64, 4] and cache.stats()["entries"] == 2  # larger than the budget: not kept
    with pytest.raises(ValueError, match="max_bytes"):
        VisionFeatureCache(0)


def test_vision_cache_encodes_a_resent_image_once(model, processor):
    """The next turn of a conversation sends its image again: the engine's vision cache gives the
    features of the first turn (the vision tower runs once per image), and every answer equals
    the request's lone answer."""
    turns = [conversation(processor, q, side) for q, side in ((QUESTIONS[1], 56), (QUESTIONS[2], 56), (QUESTIONS[1], 84))]
    lone = [lone_answer(model, x, 8) for x in turns]
    encoded = []
    hook = model.visual.register_forward_pre_hook(lambda layer, inputs: encoded.append(inputs[0].shape))
    engine = Engine(model, max_batch_size=2, max_queue=4, vision_cache=VisionFeatureCache(1 << 26))
    engine.start()
    try:
        answers = [list(engine.submit(x, SamplingParams(max_new_tokens=8)).tokens()) for x in turns]
        stats = engine.stats()["vision_cache"]
    finally:
        engine.stop()
        hook.remove()
    assert answers == lone
    assert len(encoded) == 2 and stats["hits"] == 1 and stats["misses"] == 2
    assert model.vision_feature_cache is None  # detached when the engine stopped


def test_queue_full(model, processor):
    engine = Engine(model, max_batch_size=2, max_queue=2)  # not started: nothing leaves the queue
    inputs = requests(processor)[0]
    waiting = [engine.submit(inputs, SamplingParams(max_new_tokens=3)) for _ in range(2)]
    with pytest.raises(QueueFull):
        engine.submit(inputs, SamplingParams(max_new_tokens=3))
    engine.start()
    try:
        assert [len(list(r.tokens())) > 0 for r in waiting] == [True, True]
    finally:
        engine.stop()


def test_errors_finish_only_their_request(model, processor, engine):
    good = requests(processor)[3]
    too_long = engine.submit(good, SamplingParams(max_new_tokens=10 ** 6))
    broken = dict(requests(processor)[1])
    broken.pop("image_grid_thw")  # pixels without their grid
    no_grid = engine.submit(broken, SamplingParams(max_new_tokens=4))
    fine = engine.submit(good, SamplingParams(max_new_tokens=6))
    assert list(too_long.tokens()) == [] and too_long.finish_reason == "error"
    assert "exceeds" in str(too_long.error)
    assert list(no_grid.tokens()) == [] and no_grid.finish_reason == "error"
    assert "image_grid_thw" in str(no_grid.error)
    assert list(fine.tokens()) == lone_answer(model, good, 6)
    with pytest.raises(ValueError, match="input_ids of shape"):
        engine.submit({"input_ids": paddle.ones([2, 3], dtype="int64")}, SamplingParams(max_new_tokens=2))


def test_seeded_sampling_is_reproducible(processor, engine):
    inputs = requests(processor)
    params = SamplingParams(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=7)
    alone = list(engine.submit(inputs[0], params).tokens())
    crowd = [engine.submit(x, SamplingParams(max_new_tokens=12, temperature=1.0, seed=i)) for i, x in enumerate(inputs[1:])]
    batched = engine.submit(inputs[0], params)
    assert list(batched.tokens()) == alone
    for request in crowd:
        list(request.tokens())
    other = list(engine.submit(inputs[0], SamplingParams(max_new_tokens=12, temperature=1.5, top_p=0.95, seed=8)).tokens())
    assert other != alone
