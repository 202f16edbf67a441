"""The vLLM engine adapter (``engine: vllm``) on CPU. vLLM needs a CUDA GPU and is not installed in CI:
what is checked here is what the adapter sends (the HF engine's prompt text, every image, per-item
seeds, the stop string) and what it refuses before vLLM is imported. The one test that goes through
``generate`` uses a stand-in for ``vllm.LLM`` that records the requests and answers canned text; vLLM
itself is compared with the HF engine by ``bench/vllm_vs_hf.py`` on a GPU."""

import sys
import types

import pytest
from PIL import Image

from sherlock.config import ConfigError
from sherlock.decoding import DecodingConfig
from sherlock.generation import generate, item_seed, prompt_text
from sherlock.models.engines import VLLMModel, load_generator, vllm_requests
from sherlock.stages.online import OnlineConfig

IMAGES = [[Image.new("RGB", (72, 72), (200, 0, 0))], [Image.new("RGB", (72, 72), (0, 0, 200))] * 2]


@pytest.fixture(scope="module")
def gemma3(family_model_dirs):
    from transformers import AutoProcessor
    return family_model_dirs["gemma3"], AutoProcessor.from_pretrained(family_model_dirs["gemma3"])


def test_requests_carry_the_hf_prompt_text_every_image_and_each_items_seed(gemma3):
    _, processor = gemma3
    texts = [prompt_text(processor, "How many red shapes?", "", 1),
             prompt_text(processor, "Which image is blue?", "<SUMMARY>I will", 2)]
    assert texts[1].endswith("<SUMMARY>I will") and texts[1].count(processor.boi_token) == 2
    seeds = [item_seed(3, "Y^l", key) for key in ("a", "b")]
    prompts, params = vllm_requests(texts, IMAGES, 64, 0.7, 0.9, seeds)
    assert [p["prompt"] for p in prompts] == texts
    assert [p["multi_modal_data"]["image"] for p in prompts] == IMAGES
    assert [p["seed"] for p in params] == seeds and seeds[0] != seeds[1]
    assert all(p["stop"] == ["</CONCLUSION>"] and p["include_stop_str_in_output"] and p["max_tokens"] == 64
               and (p["temperature"], p["top_p"]) == (0.7, 0.9) for p in params)
    _, greedy = vllm_requests(texts, IMAGES, 64, 0.0, 0.9, seeds)
    assert all((p["temperature"], p["top_p"], p["seed"]) == (0.0, 1.0, None) for p in greedy)


def test_generate_sends_the_same_requests_and_cuts_after_the_conclusion(gemma3, monkeypatch):
    model_dir, processor = gemma3
    sent = []

    class StandInLLM:
        def generate(self, prompts, params, use_tqdm):
            sent.append((prompts, params))
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(
                text=f"answer {k}</CONCLUSION> trailing")]) for k in range(len(prompts))]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=dict))
    config = DecodingConfig(max_new_tokens=16, temperature=0.7, seed=5, engine="vllm")
    outputs = generate(VLLMModel(model_dir, StandInLLM()), processor, ["Q one?", "Q two?"], IMAGES,
                       ["", "<SUMMARY>"], config, stream="Y^l", keys=["x", "y"])
    assert outputs == ["answer 0</CONCLUSION>", "answer 1</CONCLUSION>"]
    (prompts, params), = sent
    assert prompts[1]["prompt"] == prompt_text(processor, "Q two?", "<SUMMARY>", 2)
    assert [p["seed"] for p in params] == [item_seed(5, "Y^l", "x"), item_seed(5, "Y^l", "y")]


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen3_vl"])
def test_a_qwen_request_holds_one_placeholder_per_image_whose_grid_the_processor_makes(name, family_model_dirs):
    """vLLM computes Qwen's ``image_grid_thw`` itself from the images: the request's text holds the image
    placeholder once per image (not expanded), and Qwen's own processor, given that text and those images,
    gives one grid row per image and as many image tokens as the grids hold merged patches."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(family_model_dirs[name])
    texts = [prompt_text(processor, "How many red shapes?", "", 1), prompt_text(processor, "Which is blue?", "", 2)]
    prompts, _ = vllm_requests(texts, IMAGES, 16, 0.7, 1.0, [1, 2])
    merge = processor.image_processor.merge_size ** 2
    for prompt in prompts:
        shown = prompt["multi_modal_data"]["image"]
        assert prompt["prompt"].count(processor.image_token) == len(shown)
        encoded = processor(images=[shown], text=[prompt["prompt"]], return_tensors="pt")
        assert encoded["image_grid_thw"].shape == (len(shown), 3)
        tokens = (encoded["input_ids"] == processor.image_token_id).sum().item()
        assert tokens == encoded["image_grid_thw"].prod(-1).sum().item() // merge == 9 * len(shown)


def test_what_vllm_cannot_serve_is_refused_before_it_is_imported(gemma3, tiny_model_dir, monkeypatch):
    model_dir, _ = gemma3
    monkeypatch.setitem(sys.modules, "vllm", None)  # not installed (as in CI): the import fails
    with pytest.raises(ConfigError, match=r"needs vLLM installed .* \(none does up to vLLM 0.34.0"):
        load_generator(model_dir, "vllm")
    with pytest.raises(ConfigError, match=r"'mllama' checkpoint.*vllm-project/vllm#24907"):
        load_generator(tiny_model_dir, "vllm")
    with pytest.raises(ConfigError, match="engine must be one of"):
        load_generator(model_dir, "tgi")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        load_generator(model_dir, "vllm")
    with pytest.raises(ConfigError, match="engine must be hf"):
        OnlineConfig(model="m", data="d", output="o", engine="vllm").check()
