"""The LM learner: staleness-aware PPO on a causal LM, one DeepSpeed engine per rank.

It is blind to the algorithm: advantages arrive in the batch (computed on the
controller by the estimator the config names), and the loss is
``areal.algos.decoupled_ppo_loss`` with the configured clip settings.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from areal.algos import chunked_logprobs_entropy, chunked_token_logprobs, decoupled_ppo_loss
from areal.algos.loss_terms import MinibatchTotals, aggregate, kl_in_reward, kl_penalty
from areal.config import AlgoConfig, LearnerConfig
from areal.packing import MicroBatch, make_micro_batches, pad_to_count
from areal.prefix_sharing import shared_prefix_micro_batches
from areal.types import TrainBatch
from learners.deepspeed_learner import DeepSpeedLearner
from learners.deepspeed_setup import Rendezvous, state_sizes, use_cuda
from learners.lora import ADAPTER_DIR, LoraWeights, adapter_base
from learners.model_files import read_model_files, write_model_files

log = logging.getLogger(__name__)


def token_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token_t | tokens_<t) at every position t >= 1 of [B, T]; position 0 is 0.

    The reference computation: full float32 logits of every row and position at once
    (``learner.packing=false`` with ``learner.logprob_chunk_tokens=0``). Logits are divided
    by the sampling temperature so the learner scores the distribution the engine sampled from.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float() / temperature
    picked = logits.gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    logp = picked - torch.logsumexp(logits, dim=-1)
    return torch.nn.functional.pad(logp, (1, 0))


def causal_lm_parts(model) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(decoder, LM head) of a Hugging Face causal LM whose logits are ``head(decoder(...))``."""
    head, decoder = model.get_output_embeddings(), model.get_decoder()
    if head is None or decoder is model:
        raise ValueError(f"{type(model).__name__}: no separate decoder and LM head; chunked log-probs need both "
                         "(set learner.logprob_chunk_tokens=0 and learner.packing=false)")
    for key in ("final_logit_softcapping", "logit_scale", "output_multiplier_scale"):
        if getattr(model.config, key, None) not in (None, 1.0):
            raise ValueError(f"{type(model).__name__}: config.{key} transforms the logits after the LM head, which "
                             "chunked log-probs do not apply (set learner.logprob_chunk_tokens=0 and "
                             "learner.packing=false)")
    return decoder, head


def prefix_mask_style(model) -> str | None:
    """"sdpa" or "eager": the attention a custom 4D mask (shared-prefix rows) reaches unchanged; None when the
    model's attention would ignore or reshape it (flash/flex kernels, sliding windows)."""
    config = model.config
    style = getattr(config, "_attn_implementation", None)
    windowed = getattr(config, "use_sliding_window", False) or any(
        kind != "full_attention" for kind in getattr(config, "layer_types", None) or ())
    return style if style in ("sdpa", "eager") and not windowed else None


PPO_STATS = ("clip_fraction", "dual_clip_fraction", "dropped_fraction", "weight_truncated_fraction",
             "behavior_weight_mean", "approx_kl")


class LMLearner(DeepSpeedLearner):
    """PPO/GRPO learner for Hugging Face causal LMs (DESIGN.md "Learner").

    Every pass over a batch (the proximal log-probs and each minibatch's update) runs in
    token-budget micro-batches (``areal.packing``); log-probs come from the decoder's hidden
    states through the chunked LM head (``areal.algos.chunked_token_logprobs``).
    """

    def __init__(
        self,
        model_path: str,
        cfg: LearnerConfig,
        algo: AlgoConfig,
        temperature: float = 1.0,
        rdv: Rendezvous = Rendezvous(),
        seed: int = 0,
        total_updates: int = 1,
        adapter_sync: bool = False,
        start_model: str = "",
    ):
        """``adapter_sync``: with LoRA, exports carry the adapters alone (learner.lora.sync=adapter).
        ``start_model``: the run's starting model, the reference policy of ``algo.kl_coef`` (default:
        ``model_path``; a resumed learner's ``model_path`` is a checkpoint's)."""
        from transformers import AutoModelForCausalLM

        torch.manual_seed(seed + rdv.rank)
        self.algo, self.temperature = algo, temperature
        self.model_path = Path(model_path)
        self.model_files = read_model_files(self.model_path)  # now: a resumed run's source may be pruned later
        dtype = torch.bfloat16 if use_cuda() and not cfg.gathers_gradients else torch.float32
        # a saved LoRA model (a LoRA checkpoint's model/) resumes from its base plus its adapter, not its merge
        base = adapter_base(model_path) if cfg.lora.rank else None
        model = AutoModelForCausalLM.from_pretrained(base or model_path, dtype=dtype)
        self.lora: LoraWeights | None = None
        if cfg.lora.rank:
            self.lora = LoraWeights(model, cfg.lora, base or model_path, seed)
            if base is not None:
                self.lora.load_adapter(model, self.model_path / ADAPTER_DIR)
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        super().__init__(model, cfg, rdv, seed, total_updates)
        self.adapter_sync = bool(self.lora) and adapter_sync
        self._payload_names: list[str] | None = None  # state-dict names a weight export carries, in order
        self._config_files: dict[str, bytes] = {}  # and the config files beside them
        self.reference_path = not cfg.packing and cfg.logprob_chunk_tokens == 0
        self.mask_style = prefix_mask_style(self.engine.module) if cfg.packing and cfg.prefix_row_tokens else None
        if not self.reference_path:
            decoder, self.head = causal_lm_parts(self.engine.module)
            decoder.register_forward_hook(self._keep_hidden)
            self._hidden: torch.Tensor | None = None
            self._no_logits = torch.zeros(0, dtype=torch.long, device=self.device)
        self.kl_reference = self.make_reference(start_model or model_path, dtype) if algo.kl_coef else None

    def _keep_hidden(self, module, args, output) -> None:
        self._hidden = output[0] if isinstance(output, tuple) else output.last_hidden_state

    # -- log-probs ----------------------------------------------------------
    def micro_batches(self, batch: TrainBatch, rows) -> list[MicroBatch]:
        """``rows`` of ``batch`` in forwards of at most ``learner.max_tokens_per_mb`` tokens, as many on every rank."""
        if self.mask_style is not None:
            mbs = shared_prefix_micro_batches(batch.input_ids, batch.attention_mask, batch.loss_mask, rows,
                                              self.cfg.max_tokens_per_mb, self.cfg.prefix_row_tokens,
                                              additive=self.mask_style == "eager", dtype=self.engine.module.dtype)
        else:
            mbs = make_micro_batches(batch.input_ids, batch.attention_mask, batch.loss_mask, rows,
                                     self.cfg.max_tokens_per_mb, self.cfg.packing, self.cfg.pack_row_tokens)
        return pad_to_count(mbs, self.agreed_count(len(mbs)))

    def logprobs(self, mb: MicroBatch, width: int) -> torch.Tensor:
        """Log-probs of ``mb``'s scored tokens under the current weights, as [k, width] rows (0 elsewhere)."""
        return self.logprobs_entropy(mb, width, entropy=False)[0]

    def logprobs_entropy(self, mb: MicroBatch, width: int, entropy: bool = True,
                         entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs, the policy's entropies or None) at ``mb``'s scored tokens, as [k, width] rows, from one
        pass of the head (chunked: never [tokens, vocab] logits of the whole micro-batch)."""
        mb = mb.to(self.device)
        if self.reference_path:
            logits = self.engine(input_ids=mb.input_ids, attention_mask=mb.attention_mask).logits.float()
            logits = logits / self.temperature
            picked = logits.reshape(-1, logits.shape[-1])[mb.predictors]
            lp, h = chunked_logprobs_entropy(picked, torch.nn.Identity(), mb.targets, 1.0, 0, entropy_grad)
        else:
            # through the engine, whose forward hooks ZeRO-3 needs; the model's own head runs on no position,
            # and the decoder's output (the final hidden states) is taken by the hook above
            self.engine(input_ids=mb.input_ids, attention_mask=mb.attention_mask, position_ids=mb.position_ids,
                        use_cache=False, logits_to_keep=self._no_logits)
            hidden, self._hidden = self._hidden, None
            hidden = hidden.reshape(-1, hidden.shape[-1])[mb.predictors]
            if not entropy:
                return mb.scatter(chunked_token_logprobs(hidden, self.head, mb.targets, self.temperature,
                                                         self.cfg.logprob_chunk_tokens), width), None
            lp, h = chunked_logprobs_entropy(hidden, self.head, mb.targets, self.temperature,
                                             self.cfg.logprob_chunk_tokens, entropy_grad)
        return mb.scatter(lp, width), (mb.scatter(h, width) if entropy else None)

    @torch.no_grad()
    def batch_logprobs(self, batch: TrainBatch, rows=None) -> torch.Tensor:
        """[B, T] log-probs of the scored tokens of ``rows`` (default: all) of ``batch`` (no grad), micro-batch by
        micro-batch; 0 elsewhere."""
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=self.device)
        for mb in self.micro_batches(batch, range(len(batch)) if rows is None else rows):
            out[mb.rows.to(self.device)] = self.logprobs(mb, out.shape[1])
        return out

    def make_reference(self, start_model: str, dtype: torch.dtype):
        """The reference policy (``learners.kl_reference``): the base without adapters, or a frozen copy."""
        from learners.kl_reference import AdapterFreeReference, FrozenReference

        if self.lora is not None:
            return AdapterFreeReference(self)
        device = torch.device("cpu") if self.cfg.ref_offload else self.device
        return FrozenReference(start_model, dtype, device, self.temperature, self.cfg.logprob_chunk_tokens,
                               full_logits=self.reference_path)

    @torch.no_grad()
    def reference_logprobs(self, batch: TrainBatch) -> torch.Tensor:
        """[B, T] log-probs of the scored tokens under the reference policy, micro-batch by micro-batch."""
        out = torch.zeros(batch.input_ids.shape, dtype=torch.float32, device=self.device)
        for mb in self.micro_batches(batch, range(len(batch))):
            out[mb.rows.to(self.device)] = self.kl_reference.logprobs(mb, out.shape[1]).to(self.device)
        return out

    # -- training ---------------------------------------------------------
    def train_step(self, batch: TrainBatch) -> dict[str, float]:
        """One policy update from this rank's rows: proximal logprobs, then ``minibatches`` optimizer steps."""
        start = time.perf_counter()
        self.engine.train()
        behavior = batch.behavior_logprobs.to(self.device)
        mask = batch.loss_mask.to(self.device)
        parts = self.minibatch_rows(len(batch))
        # Stage 1: the proximal policy is the weights at the start of this step (AReaL §5.2). The first
        # minibatch's update runs on exactly those weights, so its own forward pass yields the proximal log-probs
        # of its rows (detached, in train_minibatch); a separate pass is needed only for the later minibatches'
        # rows. With one minibatch per step (the default) that pass, a quarter of the step, disappears.
        reference = self.reference_logprobs(batch) if self.kl_reference is not None else None
        advantages = batch.advantages.to(self.device)
        if reference is not None and self.algo.kl_in == "reward":
            advantages = kl_in_reward(advantages, behavior, reference, mask, self.algo.kl_coef)
        runs = [self.rows_to_run(part, advantages, mask) for part in parts]
        later = torch.cat(runs[1:]) if len(runs) > 1 else None
        if not self.algo.decoupled:
            proximal = behavior
        elif later is not None:
            proximal = self.batch_logprobs(batch, later)
        else:
            proximal = torch.zeros_like(behavior)
        proximal_seconds = time.perf_counter() - start

        # Stage 2: clipped decoupled objective, one optimizer step per minibatch.
        stats: dict[str, list[float]] = {}
        forwards = {"tokens": 0, "positions": 0, "count": 0}
        inputs = (proximal, behavior if self.algo.decoupled else proximal, advantages, mask, reference)
        for index, (part, run) in enumerate(zip(parts, runs)):
            began = time.perf_counter()
            self.train_minibatch(batch, part, inputs, stats, forwards, own_proximal=index == 0 and self.algo.decoupled,
                                 run=run)
            stats.setdefault("forward_backward_seconds", []).append(time.perf_counter() - began)
            self.optimizer_step(stats)
        ran = torch.cat(runs).to(self.device)
        mismatch = ((behavior - proximal)[ran] * mask[ran]).sum() / mask[ran].sum().clamp_min(1)
        return self.finish_update(stats, start, {
            "learner/behavior_proximal_kl": float(mismatch),
            "learner/tokens": float(mask.sum()),
            "learner/skipped_fraction": 1.0 - sum(len(r) for r in runs) / max(sum(len(p) for p in parts), 1),
            "learner/proximal_seconds": proximal_seconds,
            "learner/micro_batches": float(forwards["count"]),
            "learner/padding_fraction": 1.0 - forwards["tokens"] / max(forwards["positions"], 1),
        })

    def skips_zero_advantage(self) -> bool:
        """Whether a zero advantage means a zero gradient here: no entropy bonus and no KL term in the loss."""
        return (self.cfg.skip_zero_advantage and not self.algo.entropy_coef
                and not (self.kl_reference is not None and self.algo.kl_in == "loss"))

    def rows_to_run(self, part: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The rows of ``part`` whose gradient can be nonzero (``learner.skip_zero_advantage``).

        Without an entropy bonus or a KL term in the loss, a sequence's loss is its advantage times a bounded
        factor at every token (clipped ratio, behaviour weight), so a sequence whose scored tokens all have
        advantage 0 (every sample of its group scored alike, with ``algo.filter_zero_variance=false``) adds
        exactly nothing to the gradient. Its forward and backward are skipped; its tokens and its sequence still
        count in the aggregation's denominators, so the update is the one over the whole minibatch. At least one
        row runs (its gradient is zero too), so each minibatch takes its forward, backward and optimizer step.
        """
        if not self.skips_zero_advantage():
            return part
        rows = part.to(advantages.device)
        live = ((advantages[rows] != 0) & (mask[rows] != 0)).any(dim=-1)
        return part[live.cpu()] if bool(live.any()) else part[:1]

    def train_minibatch(self, batch: TrainBatch, part: torch.Tensor, inputs: tuple, stats: dict, forwards: dict,
                        own_proximal: bool = False, run: torch.Tensor | None = None):
        """Backward passes over the micro-batches of ``run`` (default: all of ``part``; ``rows_to_run``). Each
        loss is aggregated (``algo.loss_agg``) over the whole minibatch ``part``'s counts, on every rank
        (``minibatch_totals``), so the accumulated and combined gradient is the minibatch's however it is split
        (ALGORITHMS.md §6). The logged statistics are means over the tokens that ran. ``own_proximal``: the
        weights have not moved since the step began, so each micro-batch's detached log-probs are its proximal
        ones (written into ``inputs``' proximal tensor)."""
        proximal, behavior, advantages, mask, reference = inputs
        totals = self.minibatch_totals(mask[part.to(self.device)])
        run = part if run is None else run
        # the same collectives on every rank: whether this rank skipped anything must not decide them
        logged = self.minibatch_totals(mask[run.to(self.device)]) if self.skips_zero_advantage() else totals
        # the ranks' gradients are averaged: each rank's share of the minibatch's loss counts world_size times
        scale = float(self.rdv.world_size)
        bonus = self.algo.entropy_coef
        sums = dict.fromkeys(("loss", "entropy") + PPO_STATS + (("kl_ref",) if reference is not None else ()), 0.0)
        for mb in self.micro_batches(batch, run):
            rows = mb.rows.to(self.device)
            current, entropy = self.logprobs_entropy(mb, mask.shape[1], entropy_grad=bool(bonus))
            if own_proximal:
                proximal[rows] = current.detach()
            loss, info = decoupled_ppo_loss(
                current, proximal[rows], behavior[rows], advantages[rows], mask[rows],
                eps_clip=self.algo.eps_clip,
                eps_clip_high=self.algo.eps_clip_high,
                dual_clip=self.algo.dual_clip,
                behavior_weight_cap=self.algo.behavior_weight_cap if self.algo.decoupled else None,
                behavior_weight_mode=self.algo.behavior_weight_mode,
                behavior_weight_level=self.algo.behavior_weight_level,
                level=self.algo.level,
                loss_agg=self.algo.loss_agg,
                totals=totals,
            )
            mean_entropy = aggregate(entropy, mask[rows], "token-mean", logged)
            if bonus:
                loss = loss - bonus * aggregate(entropy, mask[rows], self.algo.loss_agg, totals)
            if reference is not None:
                kl = kl_penalty(current, reference[rows], self.algo.kl_estimator)
                sums["kl_ref"] += float(aggregate(kl.detach(), mask[rows], "token-mean", logged)) * mb.weight * scale
                if self.algo.kl_in == "loss":
                    loss = loss + self.algo.kl_coef * aggregate(kl, mask[rows], self.algo.loss_agg, totals)
            self.engine.backward(loss * (scale * mb.weight))
            share = float(mask[rows].sum()) / max(logged.tokens, 1.0) * mb.weight  # stats: means over mb's tokens
            sums["loss"] += float(loss.detach()) * mb.weight * scale
            sums["entropy"] += float(mean_entropy.detach()) * mb.weight * scale
            for key in PPO_STATS:
                sums[key] += float(info[key]) * share * scale
            forwards["tokens"] += mb.tokens
            forwards["positions"] += mb.positions
            forwards["count"] += 1
        for key, value in sums.items():
            stats.setdefault(key, []).append(value)

    def minibatch_totals(self, mask: torch.Tensor) -> MinibatchTotals:
        """The minibatch's sequences (with a scored token) and scored tokens over all data-parallel ranks, with
        ``algo.loss_norm_tokens`` (the learner is built with it resolved)."""
        counts = torch.stack([mask.any(dim=-1).sum(), mask.sum()]).to(torch.float64)
        if self.rdv.world_size > 1:
            torch.distributed.all_reduce(counts)
        return MinibatchTotals(float(counts[0]), float(counts[1]), float(self.algo.loss_norm_tokens or 1))

    # -- weights ----------------------------------------------------------
    def save_model(self, path: Path, state: dict[str, torch.Tensor]) -> None:
        """A Hugging Face model directory (safetensors) with the tokenizer, chat template and other files of the
        starting model (``learners.model_files``). With LoRA the weights are merged, and the adapter is saved
        beside them in ``adapter/`` (PEFT's layout), with the same files."""
        merged = self.lora.merge(state) if self.lora else state
        self.engine.module.save_pretrained(path, state_dict=merged, safe_serialization=True)
        write_model_files(self.model_files, path)
        if self.lora:
            self.lora.save_adapter(path / ADAPTER_DIR, state)
            write_model_files(self.model_files, path / ADAPTER_DIR)

    def export_names(self) -> list[str]:
        """State-dict names a weight export carries, in order (the base model's names: with LoRA, the merged
        weights; with adapter sync, PEFT's saved adapter names); fixed for the run, so worked out at the first
        export."""
        if self._payload_names is None:
            if self.adapter_sync:
                self._payload_names = [n for n, _ in self.export_sizes()]
            else:
                names = untied_names(self.engine.module)
                self._payload_names = self.lora.export_names(names) if self.lora else names
        return self._payload_names

    def export_sizes(self) -> list[tuple[str, int]]:
        if not self.lora:
            return super().export_sizes()
        sizes = state_sizes(self.engine, self.cfg.zero_stage)
        if self.adapter_sync:
            return self.lora.adapter_sizes(sizes)
        return self.lora.sizes(sizes, self.export_names())

    def export_tensors(self, names: list[str]) -> dict[str, torch.Tensor]:
        if not self.lora:
            return super().export_tensors(names)
        if self.adapter_sync:
            live = super().export_tensors([self.lora.live_name(n) for n in names])
            return {self.lora.adapter_key(n): t for n, t in live.items()}
        return self.lora.merge(super().export_tensors(self.lora.sources(names)), names)

    def weights_manifest(self, bound_bytes: int, root: str = "", node_id: str = ""):
        """As the base class; with adapter sync the manifest also carries the adapters' PEFT config, so an
        engine can serve them as a LoRA request on the base model it started from."""
        manifest = super().weights_manifest(bound_bytes, root, node_id)
        if manifest is None or not self.adapter_sync:
            return manifest
        return dataclasses.replace(manifest, adapter_config=json.dumps(self.lora.adapter_config(), sort_keys=True))

    def payload_files(self, state: dict[str, torch.Tensor]) -> dict[str, bytes]:
        """The files transport's payload (``safetensors_payload``), with the starting model's config files."""
        if not self._config_files:  # fixed for the run: read at the first export
            self._config_files = {name: (self.model_path / name).read_bytes()
                                  for name in ("config.json", "generation_config.json")
                                  if (self.model_path / name).exists()}
        if self.lora:
            state = self.lora.merge(state, self.export_names())
        return safetensors_payload(state, self.export_names(), self._config_files)


def untied_names(module: torch.nn.Module) -> list[str]:
    """State-dict names in order, less tensors tied to an earlier one (an LM head tied to the embedding), as
    ``save_pretrained`` leaves them out: the engine ties them again itself."""
    first: dict[int, str] = {}
    for name, tensor in module.state_dict(keep_vars=True).items():
        # storage identifies a tie; a ZeRO-3 partition may hold none here, and then only the same object is a tie
        first.setdefault(tensor.data_ptr() if tensor.numel() else id(tensor), name)
    return list(first.values())


def safetensors_payload(state: dict[str, torch.Tensor], names: list[str], config_files: dict[str, bytes]
                        ) -> dict[str, bytes]:
    """The weights ``names`` of ``state`` as one safetensors file serialised in memory, plus ``config_files`` (vLLM
    reloads the folder in place); no directory round trip (that took 4x as long for the demo model)."""
    from safetensors.torch import save

    keep = set(names)
    tensors = {name: t.contiguous() for name, t in state.items() if name in keep}
    return {"model.safetensors": save(tensors, metadata={"format": "pt"}), **config_files}
