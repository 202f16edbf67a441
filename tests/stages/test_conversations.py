"""Multi-turn LLaVA-CoT conversations through the stages: a follow-up question is trained, sampled,
paired and evaluated after the earlier turns of its conversation (the image in the first turn), and
each response is trained once (docs/data.md, "Conversations")."""

import json
import shutil

import pytest
from transformers import AutoProcessor
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from sherlock.chat import chat_prompt, prompt_turns
from sherlock.data.llava_cot import load_data
from sherlock.data.preferences import read_pairs
from sherlock.data.schema import open_image, read_jsonl
from sherlock.stages.build_preferences import BuildPreferencesConfig, run_build_preferences
from sherlock.stages.evaluate import PREDICTIONS_FILE, EvaluateConfig, run_evaluate
from sherlock.stages.sample_rejected import SampleRejectedConfig, run_sample_rejected
from sherlock.stages.scl_pairs import review_conversations
from sherlock.stages.sft import SFTStageConfig, run_sft
from sherlock.training.setup import IGNORE_INDEX
from sherlock.training.sft import LastTurnLoss, examples_from_records, sft_dataset

FOLLOW_UP = "Look at the image once more. "


@pytest.fixture(scope="module")
def conversations(tmp_path_factory, synthetic_data):
    """Four two-turn lines in the release layout: each synthetic item, then a follow-up about the same image."""
    root = tmp_path_factory.mktemp("conversations")
    lines = []
    for record in synthetic_data.records[:4]:
        (root / record.image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(synthetic_data.image_root / record.image, root / record.image)
        turns = [("<image>\n" + record.question, record.response), (FOLLOW_UP + record.question, record.response)]
        lines.append({"id": record.id, "image": record.image, "answer": record.answer,
                      "answer_type": record.answer_type,
                      "conversations": [{"from": who, "value": text} for turn in turns
                                        for who, text in zip(("human", "gpt"), turn)]})
    (root / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root


def test_a_follow_up_is_asked_after_its_earlier_turns_with_the_image_once(conversations, tiny_model_dir):
    records = load_data(conversations).records
    first, follow_up = records[0], records[1]
    assert first.context == () and follow_up.context == ((first.question, first.response),)
    assert chat_prompt(first.question, first.context) == first.question  # single turn: as before
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    text = processor.apply_chat_template(prompt_turns(follow_up.question, follow_up.context),
                                         add_generation_prompt=True)
    assert text.count(processor.image_token) == 1
    positions = [text.index(processor.image_token), text.index(first.question), text.index(first.response),
                 text.index(follow_up.question)]
    assert positions == sorted(positions)
    encoded = processor(images=[[open_image(conversations, follow_up)]], text=[text], return_tensors="pt")
    assert encoded["input_ids"].shape[1] > len(processor.tokenizer(first.response)["input_ids"])
    review = review_conversations(["first turn"], ["initial answer"], 0, [follow_up.context])[0]
    assert [m["role"] for m in review] == ["user", "assistant", "user", "assistant", "user"]
    assert review[0]["content"][0] == {"type": "image"} and all(
        part["type"] == "text" for message in review[1:] for part in message["content"])


def labelled_runs(labels) -> list[list[int]]:
    """The runs of consecutive labelled token ids of one row."""
    runs, current = [], []
    for token in labels.tolist() + [IGNORE_INDEX]:
        if token != IGNORE_INDEX:
            current.append(token)
        elif current:
            runs, current = runs + [current], []
    return runs


def test_sft_trains_each_response_once_after_its_earlier_turns(conversations, tiny_model_dir):
    """Against TRL's own collator: a single-turn example is labelled as TRL labels it; a follow-up's
    earlier assistant turn, which TRL labels too, is context only."""
    data = load_data(conversations)
    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    dataset = sft_dataset(examples_from_records(data.records[:2], data.image_root))
    trl_collator = DataCollatorForVisionLanguageModeling(processor=processor, assistant_only_loss=True)
    unextended = trl_collator([dataset[0], dataset[1]])["labels"]
    ours = LastTurnLoss(trl_collator)([dataset[0], dataset[1]])["labels"]
    assert ours[0].tolist() == unextended[0].tolist()
    assert len(labelled_runs(unextended[1])) == 2 and labelled_runs(ours[1]) == labelled_runs(unextended[1])[1:]
    # over the conversation's two records: each response once, as a whole-conversation example labels them
    assert labelled_runs(ours[0]) + labelled_runs(ours[1]) == labelled_runs(unextended[1])
    decoded = processor.tokenizer.decode(labelled_runs(ours[1])[0])
    assert decoded.startswith(data.records[1].response.strip()[:40])


def test_every_stage_runs_on_conversations_and_keeps_their_context(conversations, tiny_model_dir, tmp_path):
    records = {r.id: r for r in load_data(conversations).records}
    rejected = run_sample_rejected(SampleRejectedConfig(model=str(tiny_model_dir), data=str(conversations),
                                                        output=str(tmp_path / "rejected"), max_new_tokens=16))
    assert [row["id"] for row in read_jsonl(rejected)] == list(records)
    model = run_sft(SFTStageConfig(model=str(tiny_model_dir), data=str(conversations), rejected=str(rejected),
                                   output=str(tmp_path / "sft"), max_steps=1, batch_size=16))
    pairs_file = run_build_preferences(BuildPreferencesConfig(model=str(model), data=str(conversations),
                                                            output=str(tmp_path / "pairs"), max_new_tokens=16))
    pairs = read_pairs(pairs_file.parent)
    assert pairs and all(pair.context == records[pair.id].context for pair in pairs)
    assert any(pair.context for pair in pairs)
    rows = read_jsonl(pairs_file)
    assert all(("context" in row) == bool(records[row["id"]].context) for row in rows)  # single turns as before
    run_evaluate(EvaluateConfig(model=str(model), benchmarks=f"llava_cot={conversations}",
                                    output=str(tmp_path / "eval"), correction_rounds=1, max_new_tokens=16,
                                    greedy_direct=False, blank_image=False))
    predictions = read_jsonl(tmp_path / "eval" / PREDICTIONS_FILE)
    assert sorted({p["id"] for p in predictions}) == sorted(records)
