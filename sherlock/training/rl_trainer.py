"""Octopus RL on TRL's ``GRPOTrainer``: n generated rollouts plus n recombined ones per group, selective
masks, a KL on o1 (``docs/octopus.md``; the text-level pieces are :mod:`sherlock.octopus`).

TRL gives the rest unchanged: generation (HF ``generate``, or vLLM where a GPU has it), the group-normalised
advantage over the N rows that share a prompt, the sequence-level (GSPO) ratio and its clipping, the
per-sequence mean of the loss over ``mask = completion_mask · tool_mask``, the optimiser, logging and
checkpoints. :class:`OctopusTrainer` adds, narrowly, what the spec's §6 lists as missing:

1. the group: ``num_generations`` is N; :meth:`_generate` generates n = N/2 rows per group and fills the
   other n with pairs ``o1_i ⊕ SEP ⊕ o2_j ⊕ EOS`` built from the rollouts' own token ids (SEP tokenised once),
   whose decoded text the reward functions score;
2. the ground truth inside generation: :meth:`_generate_and_score_completions` keeps the rows;
3. whole groups in one process: the rows of a group must be consecutive and local (checked). TRL's sampler
   repeats each prompt N times in a row and hands each process consecutive runs of ``batch_size ×
   steps_per_generation`` rows, so a multiple of N keeps every group on one rank (``TrainRLConfig.check_rl``),
   and TRL's advantage, gathered over the processes, still normalises within each group; the group statistics
   are summed over the processes before they are logged;
4. the policy mask as TRL's ``tool_mask`` (0 on ``o1 ⊕ SEP`` where the stage masks it), and Stage I's KL on
   o1 against a frozen reference, added to TRL's loss on the log-probs TRL's own forward pass computed;
5. Mllama's inputs TRL does not pass (``aspect_ratio_ids``/``_mask`` and a ``cross_attention_mask`` over
   prompt and completion, which every token from the image token on attends with, as generation extends it).

With ``selection="none"``, ``mask="none"`` and no KL it trains exactly as ``GRPOTrainer`` does
(``tests/training/test_rl_trainer.py`` compares the two).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from trl import GRPOTrainer
from trl.trainer import add_fused_lm_head

from sherlock.answers import is_correct
from sherlock.octopus import FORMATS, masked_attempt, one_round, pair_pool, select_pairs, split_attempts
from sherlock.reasoning import SC_CLOSE, SC_OPEN, SEP

MLLAMA_IMAGE_KEYS = ("aspect_ratio_ids", "aspect_ratio_mask")
KL_CLAMP = 10.0  # the k3 estimator's log-ratio clamp (EasyR1's low_var_kl)


@dataclass(frozen=True)
class OctopusSettings:
    """What the trainer adds to GRPO: generated rows per group, pair selection, masks, the o1 KL."""
    generations: int  # n: rollouts generated per prompt; the group holds 2n rows with pairs, n without
    selection: str = "paper"  # sherlock.octopus.SELECTIONS
    include_same: bool = False  # pairs (i, i) in the pool (the released code) or not (Alg. 1)
    mask: str = "every"  # sherlock.octopus.MASKS: every (Stage I), changed (Stage II), none
    o1_kl: float = 0.0  # coefficient of the k3 KL on o1 tokens against the reference (Stage I: 0.01)
    response_format: str = "stages"

    @property
    def group_size(self) -> int:
        """N: the rows that share a prompt and its normalised advantage."""
        return self.generations if self.selection == "none" else 2 * self.generations


def token_ends(tokenizer, ids: list[int]) -> list[int]:
    """The length of the decoded text of ``ids[:k]`` for every k (0 … len): where each token ends."""
    return [len(tokenizer.decode(ids[:k], skip_special_tokens=True)) for k in range(len(ids) + 1)]


def tokens_covering(ends: list[int], position: int) -> int:
    """The fewest leading tokens whose text reaches character ``position``."""
    return next(k for k, end in enumerate(ends) if end >= position)


def cross_attention_mask(input_ids: torch.Tensor, image_token_id: int, aspect_ratio_mask: torch.Tensor) -> torch.Tensor:
    """Mllama's (B, L, 1, tiles) mask of one image per row: every token from the image token on attends to the
    image's valid tiles (the processor's mask over a prompt, continued through the completion as generation
    continues it).
    """
    after_image = (input_ids == image_token_id).long().cumsum(dim=1) > 0
    return after_image[:, :, None, None].long() * aspect_ratio_mask[:, None, :1, :].long()


@dataclass
class _Rollout:
    ids: list[int]
    text: str
    ends: list[int]
    o1_end: int | None  # tokens of the first attempt's answer (None: incomplete)
    o2: tuple[int, int] | None  # token span of the second attempt
    masked_until: int  # tokens of o1 ⊕ SEP (0: no correction)
    kl_until: int  # tokens before <self-correction> (0: no correction)
    kind: str | None  # (c(o1), c(o2)) class of a correction sequence; None without the tag
    first_right: bool | None
    second_right: bool | None
    final_right: bool


class OctopusTrainer(GRPOTrainer):
    """``GRPOTrainer`` with Octopus's rollout augmentation, masks and o1 KL (see the module docstring)."""

    def __init__(self, *args, octopus: OctopusSettings, reference_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        if self.num_generations != octopus.group_size:
            raise ValueError(f"num_generations must be the group size {octopus.group_size}, got {self.num_generations}")
        if octopus.o1_kl and reference_model is None:
            raise ValueError("a KL on o1 needs a reference model")
        self.octopus = octopus
        self.response_format = FORMATS[octopus.response_format]
        self.reference_model = reference_model
        if reference_model is not None:  # scored as TRL scores its own reference: through the fused head
            reference_model.to(self.accelerator.device).eval()
            add_fused_lm_head(reference_model, temperature=self.temperature,
                              cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)
        self.separator = self._tokenizer.encode(SEP, add_special_tokens=False)
        # the separator's tokens before <self-correction>: o1's KL covers them, as in a generated rollout
        self.separator_lead = tokens_covering(token_ends(self._tokenizer, self.separator), SEP.index(SC_OPEN))
        config = self.accelerator.unwrap_model(self.model).config
        self.image_token_id = getattr(config, "image_token_index", None) if config.model_type == "mllama" else None
        self._rows: list[dict] = []
        self._masks: dict[str, list[list[int]]] = {}
        self._loss_inputs: dict | None = None
        self._policy_logps: torch.Tensor | None = None

    # --- generation: n rollouts, n pairs, the masks -------------------------------------------------------
    def _generate_and_score_completions(self, inputs):
        self._rows = inputs
        group = self.num_generations
        for start in range(0, len(inputs), group):
            if len({row["id"] for row in inputs[start:start + group]}) != 1:
                raise ValueError("a group's rows must be consecutive rows of one prompt in one process")
        if self.image_token_id is not None:
            self._loss_inputs = self._mllama_image_inputs(inputs)
        output = super()._generate_and_score_completions(inputs)
        if self.image_token_id is not None:
            output |= self._loss_inputs
        width = output["completion_ids"].size(1)
        output["kl_mask"] = torch.tensor([m + [0] * (width - len(m)) for m in self._masks["kl"]],
                                         device=output["completion_ids"].device)
        if self.octopus.o1_kl:
            output["reference_logps"] = self._reference_logps(output)
        return output

    def _generate(self, prompts):
        if not self.model.training:
            return super()._generate(prompts)
        n, group = self.octopus.generations, self.num_generations
        generated = [g + r for g in range(0, len(prompts), group) for r in range(n)]
        self.num_generations = n  # vLLM's server mode takes every num_generations-th prompt
        try:
            prompt_ids, completion_ids, _, completions, logprobs, extra, images, tool_images = \
                super()._generate([prompts[i] for i in generated])
        finally:
            self.num_generations = group
        rng = random.Random(hash((self.args.seed, self.state.global_step, self.accelerator.process_index)))
        rows = {"prompt_ids": [], "completion_ids": [], "mask": [], "kl": [], "logprobs": [], "images": []}
        counts = {"generated_right": 0, "natural_wc": 0, "trained_right": 0, "pool": 0, "copies": 0}
        counts |= dict.fromkeys(("pairs_wc", "pairs_cc", "pairs_cw", "pairs_ww"), 0)
        for g, start in enumerate(range(0, len(generated), n)):
            gold = self._rows[g * group]
            rollouts = [self._rollout(completion_ids[start + r], gold) for r in range(n)]
            pool = pair_pool([r.first_right if r.o1_end else None for r in rollouts],
                             [r.second_right if r.o2 else None for r in rollouts], self.octopus.include_same)
            pairs = select_pairs(pool, [r.final_right for r in rollouts], self.octopus.selection, rng)
            sequences = [(r.ids, r.masked_until, r.kl_until, r.final_right) for r in rollouts]
            for pair in pairs:
                first, second = rollouts[pair.first], rollouts[pair.second]
                o1 = first.ids[:first.o1_end]
                ids = o1 + self.separator + second.ids[second.o2[0]:second.o2[1]] + [self.eos_token_ids[0]]
                masked = len(o1) + len(self.separator) if masked_attempt(pair.kind, self.octopus.mask) else 0
                sequences.append((ids, masked, len(o1) + self.separator_lead, pair.kind.endswith("c")))
                counts[f"pairs_{pair.kind}"] += 1
            copies = self.num_generations - len(sequences) if self.octopus.selection != "none" else 0
            sequences += [sequences[k % n] for k in range(copies)]
            counts["copies"] += copies
            counts["pool"] += len(pool)
            counts["generated_right"] += sum(r.final_right for r in rollouts)
            counts["natural_wc"] += sum(r.kind == "wc" for r in rollouts)
            counts["trained_right"] += sum(s[3] for s in sequences)
            for k, (ids, masked, kl_until, _) in enumerate(sequences):
                source = start + min(k, n - 1)  # every row of a group has the same prompt and image
                rows["prompt_ids"].append(prompt_ids[source])
                rows["images"].append(images[source] if images is not None else None)
                rows["completion_ids"].append(ids)
                rows["mask"].append([0] * masked + [1] * (len(ids) - masked))
                kl_until = kl_until if self.octopus.o1_kl else 0
                rows["kl"].append([1] * kl_until + [0] * (len(ids) - kl_until))
                if logprobs is not None:
                    rows["logprobs"].append(logprobs[start + k] if k < n else [None] * len(ids))
        self._masks = {"kl": rows["kl"]}
        self._log_group_counts(counts, len(generated), len(rows["completion_ids"]))
        completions = self._decode(rows["completion_ids"], prompts)
        return (rows["prompt_ids"], rows["completion_ids"], rows["mask"], completions,
                rows["logprobs"] if logprobs is not None else None, extra,
                rows["images"] if images is not None else None, tool_images)

    def _rollout(self, ids: list[int], gold: dict) -> _Rollout:
        """One generated rollout cut to one round, its attempts as token spans, their correctness."""
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        ends = token_ends(self._tokenizer, ids)
        if (cut := one_round(text)) != text:
            ids = ids[:tokens_covering(ends, len(cut))] + [self.eos_token_ids[0]]
            text, ends = self._tokenizer.decode(ids, skip_special_tokens=True), token_ends(self._tokenizer, ids)
        attempts = split_attempts(text, self.response_format)

        def right(part: str) -> bool:
            return is_correct(part, gold["answer"], gold.get("answer_type"))

        opening = text.find(SC_OPEN)
        first_text = text if opening < 0 else text[:opening]
        first_right = right(first_text[:attempts.o1]) if attempts.o1 is not None else None
        o2 = attempts.o2
        second_right = right(text[o2[0]:o2[1]]) if o2 else None
        kind = masked_until = kl_until = None
        if attempts.corrects:
            closing = text.rfind(SC_CLOSE) + len(SC_CLOSE)
            kind = ("c" if right(first_text) else "w") + ("c" if right(text[closing:]) else "w")
            masked_until = tokens_covering(ends, o2[0] if o2 else closing)
            kl_until = tokens_covering(ends, opening)
        return _Rollout(
            ids=ids, text=text, ends=ends,
            o1_end=tokens_covering(ends, attempts.o1) if attempts.o1 is not None else None,
            o2=(tokens_covering(ends, o2[0]), tokens_covering(ends, o2[1])) if o2 else None,
            masked_until=masked_until if masked_attempt(kind, self.octopus.mask) else 0,
            kl_until=kl_until or 0, kind=kind, first_right=first_right, second_right=second_right,
            final_right=bool(second_right if attempts.corrects else first_right),
        )

    def _decode(self, completion_ids: list[list[int]], prompts) -> list:
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)
        conversational = isinstance(prompts[0], list)
        return [[{"role": "assistant", "content": text}] for text in texts] if conversational else texts

    def _log_group_counts(self, counts: dict, generated: int, trained: int) -> None:
        """Signal density (§7), summed over the processes: w→c among generated rollouts, positive share before
        and after augmentation, the pool per group, the pairs and copies of the generation batch.
        """
        names = sorted(counts)
        local = torch.tensor([counts[name] for name in names] + [generated, trained], dtype=torch.float64,
                             device=self.accelerator.device)
        *summed, generated, trained = self.accelerator.reduce(local, reduction="sum").tolist()
        counts = dict(zip(names, summed, strict=True))
        metrics = self._metrics["train"]
        metrics["octopus/rollouts"].append(generated)
        metrics["octopus/natural_wc_rate"].append(counts["natural_wc"] / generated)
        metrics["octopus/positive_share_generated"].append(counts["generated_right"] / generated)
        metrics["octopus/positive_share_trained"].append(counts["trained_right"] / trained)
        metrics["octopus/pool_size"].append(counts["pool"] / (generated / self.octopus.generations))
        metrics["octopus/copied_rows"].append(counts["copies"])
        for kind in ("wc", "cc", "cw", "ww"):
            metrics[f"octopus/pairs_{kind}"].append(counts[f"pairs_{kind}"])

    # --- the forward pass: Mllama's inputs, the captured policy log-probs ---------------------------------
    def _mllama_image_inputs(self, rows: list[dict]) -> dict:
        """Each row's ``aspect_ratio_ids``/``_mask`` from the processor's image processor (TRL drops them)."""
        images = [[row["image"]] for row in rows]
        processed = self.processing_class.image_processor(images=images, return_tensors="pt")
        return {key: processed[key].to(self.accelerator.device) for key in MLLAMA_IMAGE_KEYS}

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **image_inputs):
        if self.image_token_id is None:
            result = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **image_inputs)
        else:
            result = self._mllama_logps(model, input_ids, attention_mask, logits_to_keep, batch_size,
                                        compute_entropy, image_inputs)
        if torch.is_grad_enabled():
            self._policy_logps = result[0]
        return result

    def _mllama_logps(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                      image_inputs):
        """TRL's chunked forward pass (log-probs through its fused head) with Mllama's inputs."""
        extra = {key: image_inputs.get(key) if image_inputs.get(key) is not None else self._loss_inputs[key]
                 for key in MLLAMA_IMAGE_KEYS}
        cross = cross_attention_mask(input_ids, self.image_token_id, extra["aspect_ratio_mask"])
        batch_size = batch_size or input_ids.size(0)
        logps, entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            labels = input_ids[rows].masked_fill(attention_mask[rows] == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                outputs = model(input_ids=input_ids[rows], attention_mask=attention_mask[rows],
                                pixel_values=image_inputs["pixel_values"][rows], cross_attention_mask=cross[rows],
                                **{key: value[rows] for key, value in extra.items()}, labels=labels,
                                fused_lm_head=True)
            logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                entropies.append(outputs.entropy[:, -logits_to_keep:])
        return torch.cat(logps), torch.cat(entropies) if compute_entropy else None, None

    # --- the loss: TRL's, plus Stage I's KL on o1 ---------------------------------------------------------
    def _compute_loss(self, model, inputs):
        if self.image_token_id is not None:
            self._loss_inputs = {key: inputs[key] for key in MLLAMA_IMAGE_KEYS}
        loss = super()._compute_loss(model, inputs)
        if not self.octopus.o1_kl:
            return loss
        mask = inputs["kl_mask"].float()
        delta = (inputs["reference_logps"] - self._policy_logps).clamp(-KL_CLAMP, KL_CLAMP)
        k3 = torch.exp(delta) - delta - 1
        with_o1 = mask.sum(-1) > 0
        per_sequence = (k3 * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        kl = per_sequence[with_o1].mean() if with_o1.any() else per_sequence.sum() * 0
        self._metrics["train"]["octopus/o1_kl"].append(self.accelerator.gather(kl.detach()).mean().item())
        return loss + self.octopus.o1_kl * kl / self.current_gradient_accumulation_steps

    @torch.no_grad()
    def _reference_logps(self, output: dict) -> torch.Tensor:
        """The frozen reference's log-probs of every completion token (used on o1's)."""
        input_ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
        attention_mask = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
        image_inputs = {key: output[key] for key in ("pixel_values", "image_grid_thw", "num_images",
                                                     "pixel_attention_mask", "image_sizes", "token_type_ids",
                                                     "mm_token_type_ids", *MLLAMA_IMAGE_KEYS) if key in output}
        logps, _, _ = self._get_per_token_logps_and_entropies(
            self.reference_model, input_ids, attention_mask, output["completion_ids"].size(1),
            self.args.per_device_train_batch_size, **image_inputs)
        return logps
