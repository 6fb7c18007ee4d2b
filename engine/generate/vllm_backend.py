"""generate.backend=vllm: the same requests through vLLM, for a model that does not fit one GPU
(tensor parallelism: generate.tensor_parallel > 1, one launched process) or for vLLM's paged
attention at scale. vLLM reads the Hugging Face directory (our save_hf export) itself.

What carries over from the engine backend, so the output files have the same meaning:
- prompts go in as token ids (our template's), never re-rendered by vLLM's chat template;
- one vLLM request per (prompt, sample index), n=1, seeded with the sample's own key
  (engine/sampling.sample_key): a sample depends on (seed, dataset, id, sample index) only, so a
  resumed run redoes exactly the missing samples; vLLM's prefix caching shares the prompt's
  prefill among a prompt's samples;
- texts are decoded by our tokenizer and cut at the first stop string the same way
  (ie_engine.engine.generate.generator.finish_sample); finish_reason and the token count are vLLM's.
The random streams differ from the engine backend's (vLLM draws its own noise), so the two
backends agree in distribution, and token for token only when greedy.

Settings map as: n -> one request per sample; temperature, top_p -> the same; top_k 0 -> -1
(vLLM's "off"); max_new_tokens -> max_tokens; seed -> per-request seed; stop -> stop (when the
checkpoint directory has tokenizer files for vLLM to detokenize with; otherwise vLLM runs
without a tokenizer and the stop strings are applied to the decoded text afterwards).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from ie_engine.engine.config import ConfigError
from ie_engine.engine.generate.generator import Completion, Request, finish_sample
from ie_engine.engine.generate.sampling import sample_key

CHUNK = 4096  # requests per llm.generate call: finished samples are written after each


def import_vllm():
    try:
        import vllm
    except ImportError:
        raise ConfigError("generate.backend=vllm needs vLLM installed (pip install vllm, on a CUDA machine); "
                          "generate.backend=engine (the default) needs nothing more") from None
    return vllm


def request_seed(seed: int, key: tuple[str, str], sample_index: int) -> int:
    """A sample's own 63-bit seed, from the same key as the engine backend's noise."""
    lo, hi = sample_key(seed, *key, sample_index)
    return ((hi << 32) | lo) & ((1 << 63) - 1)


def sampling_kwargs(settings, seed: int, detokenize: bool) -> dict:
    """Our GenerateSection as vLLM SamplingParams keyword arguments, for one sample."""
    return dict(n=1, temperature=settings.temperature, top_p=settings.top_p,
                top_k=settings.top_k if settings.top_k > 0 else -1, max_tokens=settings.max_new_tokens,
                seed=seed, stop=list(settings.stop) if detokenize and settings.stop else None,
                detokenize=detokenize, skip_special_tokens=True)


def llm_kwargs(checkpoint: str | Path, settings, dtype: str, seed: int) -> dict:
    checkpoint = Path(checkpoint)
    has_tokenizer = (checkpoint / "tokenizer_config.json").exists()
    return dict(model=str(checkpoint), tensor_parallel_size=settings.tensor_parallel, dtype=dtype, seed=seed,
                enable_prefix_caching=True, skip_tokenizer_init=not has_tokenizer)


def generate_vllm(checkpoint: str | Path, requests: list[Request], settings, tokenizer, *, seed: int = 0,
                  dtype: str = "bfloat16") -> Iterator[list[Completion]]:
    """ie_engine.engine.generate.generator.generate's contract, through vLLM on the checkpoint directory (bf16:
    vLLM's "auto" would run an fp32 export, as SFT writes it, in fp16)."""
    vllm = import_vllm()
    if not Path(checkpoint, "config.json").is_file():
        raise ConfigError(f"model.checkpoint: {checkpoint} is not a Hugging Face directory (no config.json)")
    kwargs = llm_kwargs(checkpoint, settings, dtype, seed)
    llm = vllm.LLM(**kwargs)
    detokenize = not kwargs["skip_tokenizer_init"]
    jobs = [(r, s) for r in requests for s in r.samples]
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start:start + CHUNK]
        prompts = [{"prompt_token_ids": list(r.ids)} for r, _ in chunk]
        params = [vllm.SamplingParams(**sampling_kwargs(settings, request_seed(seed, r.key, s), detokenize))
                  for r, s in chunk]
        outputs = llm.generate(prompts, params, use_tqdm=False)
        batch = []
        for (r, s), out in zip(chunk, outputs):
            o = out.outputs[0]
            tokens, text, reason = finish_sample(list(o.token_ids), tokenizer, tokenizer.eos_id, settings.stop,
                                                 stopped=o.finish_reason == "stop")
            batch.append(Completion(r, s, tokens, text, reason))
        yield batch
