"""Prompts: the model's own chat template (thinking on or off), an optional system prompt, and a token budget.

Prompts are token ids (rendered text tokenized without extra special tokens), so every backend sees exactly
the same input and a greedy run is comparable across vLLM and transformers. (The reference sends the text to
vLLM, which tokenizes it with the tokenizer's default special tokens: the same ids for Qwen3, which adds no
BOS.)

A tokenizer that cannot render the chat template with `enable_thinking` falls back as the reference's does:
the template without it, then plain "role: content" paragraphs ending in "assistant:". The opd protocol
(`strict`) refuses to fall back.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]
    truncated: bool  # the question was cut to fit the input budget


def render(tokenizer, question: str, *, system_prompt: str | None, thinking: bool, strict: bool = False) -> str:
    """The chat-template rendering of [system?, user] with the generation prompt opened (fallbacks: see the
    module docstring)."""
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else []) + [
        {"role": "user", "content": question}
    ]
    try:
        # enable_thinking is a template variable: templates that do not use it ignore it
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                             enable_thinking=thinking)
    except (TypeError, ValueError) as e:
        if strict:
            raise ValueError(f"the tokenizer cannot render its chat template in thinking mode ({e}); the opd "
                             "protocol needs the Qwen3 chat template") from None
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except (AttributeError, TypeError, ValueError):
        return "\n\n".join([*(f"{m['role']}: {m['content']}" for m in messages), "assistant:"])


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


class PromptTooLong(ValueError):
    def __init__(self, n_tokens: int, budget: int):
        super().__init__(f"a prompt has {n_tokens} tokens, over the input budget of {budget}; raise "
                         "max_input_tokens or set truncation to left/right")
        self.n_tokens = n_tokens


def build_prompt(tokenizer, question: str, *, system_prompt: str | None, thinking: bool, max_input_tokens: int,
                 truncation: str = "left", strict: bool = False) -> Prompt:
    """Render and tokenize one question; over `max_input_tokens`, cut the question's tokens (`left`: drop its
    start, keeping the question asked at its end; `right`: drop its end) until it fits, or (`error`) raise
    PromptTooLong."""
    text = render(tokenizer, question, system_prompt=system_prompt, thinking=thinking, strict=strict)
    ids = _encode(tokenizer, text)
    if len(ids) <= max_input_tokens:
        return Prompt(text, ids, False)
    if truncation == "error":
        raise PromptTooLong(len(ids), max_input_tokens)
    q_ids = _encode(tokenizer, question)
    overhead = len(ids) - len(q_ids)
    keep = max_input_tokens - overhead
    for _ in range(8):  # re-tokenizing at the cut can shift a token or two: shrink until it fits
        if keep <= 0:
            raise ValueError(f"the chat template alone takes {overhead} tokens, over the input budget of "
                             f"{max_input_tokens}; raise max_input_tokens")
        part = q_ids[-keep:] if truncation == "left" else q_ids[:keep]
        text = render(tokenizer, tokenizer.decode(part), system_prompt=system_prompt, thinking=thinking,
                      strict=strict)
        ids = _encode(tokenizer, text)
        if len(ids) <= max_input_tokens:
            return Prompt(text, ids, True)
        keep -= len(ids) - max_input_tokens
    raise AssertionError("prompt truncation did not converge")


def _ids(value) -> list[int]:
    if value is None:
        return []
    return [int(v) for v in (value if isinstance(value, (list, tuple)) else [value]) if v is not None]


def generation_config_eos(model_path: str, trust_remote_code: bool = False) -> list[int]:
    """The eos ids vLLM adds to a request's stops: the checkpoint's generation_config.json, else (no such
    file) the model config's."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return _ids(GenerationConfig.from_pretrained(model_path).eos_token_id)
    except OSError:
        pass
    try:
        config = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError):
        return []
    return _ids(GenerationConfig.from_model_config(config).eos_token_id)


def stop_token_ids(tokenizer, extra_tokens: list[str] | tuple[str, ...] = (), *, extra_ids: list[int] = (),
                   model_eos: list[int] = ()) -> list[int]:
    """The tokenizer's eos, the checkpoint's eos ids (`model_eos`), `extra_ids`, and those of `extra_tokens`
    that exist in the vocabulary (as single tokens)."""
    ids = _ids(tokenizer.eos_token_id) + list(model_eos) + list(extra_ids)
    vocab = tokenizer.get_vocab()
    for tok in extra_tokens:
        if tok in vocab:
            ids.append(int(vocab[tok]))
    return list(dict.fromkeys(ids))
