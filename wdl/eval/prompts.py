"""Prompts: the model's own chat template (thinking on or off), an optional system prompt, and a token budget.

Prompts are token ids (rendered text tokenized without extra special tokens), so every backend sees exactly
the same input and a greedy run is comparable across vLLM and transformers.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]
    truncated: bool  # the question was cut to fit the input budget


def render(tokenizer, question: str, *, system_prompt: str | None, thinking: bool) -> str:
    """The chat-template rendering of [system?, user] with the generation prompt opened."""
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the tokenizer has no chat template; evaluation prompts go through the model's chat "
                         "template (save the tokenizer with one, e.g. the base model's)")
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": question}
    ]
    # enable_thinking is a template variable: templates that do not use it ignore it
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                         enable_thinking=thinking)


def _encode(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def build_prompt(tokenizer, question: str, *, system_prompt: str | None, thinking: bool, max_input_tokens: int,
                 truncation: str = "left") -> Prompt:
    """Render and tokenize one question; over `max_input_tokens`, cut the question's tokens (`left`: drop its
    start, keeping the question asked at its end; `right`: drop its end; `error`: raise) until it fits."""
    text = render(tokenizer, question, system_prompt=system_prompt, thinking=thinking)
    ids = _encode(tokenizer, text)
    if len(ids) <= max_input_tokens:
        return Prompt(text, ids, False)
    if truncation == "error":
        raise ValueError(f"a prompt has {len(ids)} tokens, over the input budget of {max_input_tokens}; raise "
                         "max_input_tokens or set truncation to left/right")
    q_ids = _encode(tokenizer, question)
    overhead = len(ids) - len(q_ids)
    keep = max_input_tokens - overhead
    for _ in range(8):  # re-tokenizing at the cut can shift a token or two: shrink until it fits
        if keep <= 0:
            raise ValueError(f"the chat template alone takes {overhead} tokens, over the input budget of "
                             f"{max_input_tokens}; raise max_input_tokens")
        part = q_ids[-keep:] if truncation == "left" else q_ids[:keep]
        text = render(tokenizer, tokenizer.decode(part), system_prompt=system_prompt, thinking=thinking)
        ids = _encode(tokenizer, text)
        if len(ids) <= max_input_tokens:
            return Prompt(text, ids, True)
        keep -= len(ids) - max_input_tokens
    raise AssertionError("prompt truncation did not converge")


def stop_token_ids(tokenizer, extra_tokens: list[str] | tuple[str, ...]) -> list[int]:
    """The tokenizer's eos plus those of `extra_tokens` that exist in its vocabulary (as single tokens)."""
    ids = []
    eos = tokenizer.eos_token_id
    for e in eos if isinstance(eos, (list, tuple)) else [eos]:
        if e is not None:
            ids.append(int(e))
    vocab = tokenizer.get_vocab()
    for tok in extra_tokens:
        if tok in vocab:
            ids.append(int(vocab[tok]))
    return list(dict.fromkeys(ids))
