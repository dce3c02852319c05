"""Offline building blocks: a Qwen-style tokenizer and a tiny Qwen3 config for the embedded default, and a
tokenizer with Qwen3's real vocabulary layout for real-shape tests.

Nothing here downloads anything. `build_tokenizer` is a byte-level BPE trained with `tokenizers` on whatever
texts the caller passes (the pipeline passes its synthetic math corpus), with Qwen3's special tokens and a
Qwen3-style chat template (system/user/assistant turns, `<think>` blocks, `enable_thinking`).
`build_qwen3_vocab_tokenizer` has Qwen3's layout: 151,643 byte-level BPE ids (a small trained BPE, the rest
unused fillers), the 26 added tokens at their real ids 151643-151668 (`<|endoftext|>`, `<|im_start|>`,
`<|im_end|>`, ..., `<think>` 151667, `</think>` 151668) with Qwen3's special flags, and Qwen3's own chat
template; with `qwen3_vocab_config` (V = 151936, tied embeddings) it gives a Qwen3-shaped model whose vocabulary
costs what the real one does.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen3Config

from wdl.qwen3_template import QWEN3_OFFICIAL_CHAT_TEMPLATE

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
THINK_START = "<think>"
THINK_END = "</think>"
# Order fixes the ids 0..N-1 of the special tokens; keep it stable across releases.
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END, THINK_START, THINK_END]

# Qwen3's chat template without tool calling. Like Qwen3's, it splits a `<think>...</think>` prefix off the
# assistant content, renders the reasoning only for turns after the last user query, always opens a think
# block in the final assistant turn, and with `enable_thinking=False` pre-fills an empty think block.
QWEN3_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- set ns = namespace(searching=true, last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}"
    "{%- set index = (messages|length - 1) - loop.index0 %}"
    "{%- if ns.searching and message.role == 'user' %}"
    "{%- set ns.searching = false %}"
    "{%- set ns.last_query_index = index %}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'user' or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set content = message.content %}"
    "{%- set reasoning_content = '' %}"
    "{%- if message.reasoning_content is defined and message.reasoning_content is string %}"
    "{%- set reasoning_content = message.reasoning_content %}"
    "{%- elif '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and (loop.last or reasoning_content) %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n'"
    " + content.lstrip('\\n') }}"
    "{%- else %}"
    "{{- '<|im_start|>assistant\\n' + content }}"
    "{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)

_DEFAULT_CORPUS = (
    "Question: Tom has 3 apples and buys 4 more. How many apples does he have now?",
    "Step 1: 3 + 4 = 7. The answer is \\boxed{7}.",
    "Let x be the number of pencils. Then 2x - 5 = 11, so x = 8.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000 + - * / = ( ) . , ? ! : ; % $",
)


def build_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with Qwen3's special tokens and chat template.

    Any text is encodable (the 256 byte symbols are always in the vocabulary); `vocab_size` counts them,
    the merges and the special tokens. Deterministic for the same texts and vocab_size.
    """
    n_min = 256 + len(SPECIAL_TOKENS)
    if vocab_size < n_min:
        raise ValueError(f"vocab_size={vocab_size} is too small: use at least {n_min} (256 bytes + special tokens)")
    corpus = list(texts) if texts is not None else list(_DEFAULT_CORPUS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END, THINK_START, THINK_END],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = QWEN3_CHAT_TEMPLATE
    return fast


def tiny_qwen3_config(
    vocab_size: int,
    *,
    hidden_size: int = 128,
    intermediate_size: int = 384,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    head_dim: int = 64,
    max_position_embeddings: int = 2048,
    tie_word_embeddings: bool = True,
    eos_token_id: int = 0,
    pad_token_id: int = 0,
) -> Qwen3Config:
    """A Qwen3 config small enough to train on a CPU in minutes (head_dim 64 so vLLM can serve it)."""
    return Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=tie_word_embeddings,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        rms_norm_eps=1e-6,
        architectures=["Qwen3ForCausalLM"],
    )


# ------------------------------------------------------------------------------- Qwen3's vocabulary layout
QWEN3_VOCAB_SIZE = 151936  # embedding rows of every Qwen3 checkpoint (the tokenizer has 151669 ids)
QWEN3_REGULAR_TOKENS = 151643  # byte-level BPE ids 0..151642
# Qwen3's added tokens from id 151643 on, in id order, with their `special` flag (special ones are dropped by
# skip_special_tokens; <think> / </think> and the tool / FIM tokens are not special)
QWEN3_ADDED_TOKENS = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
)


def build_qwen3_vocab_tokenizer(
    texts: Iterable[str] | None = None, merges_vocab: int = 2048
) -> PreTrainedTokenizerFast:
    """A tokenizer with Qwen3's id layout and chat template (module docstring), built offline in about a second.

    A byte-level BPE of `merges_vocab` ids is trained on `texts`; ids up to 151642 are filled with byte-pair
    strings no merge produces (they decode to bytes like any other id); the added tokens follow at their real
    ids. Deterministic for the same texts."""
    corpus = list(texts) if texts is not None else list(_DEFAULT_CORPUS)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=merges_vocab, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    spec = json.loads(tok.to_str())
    vocab = spec["model"]["vocab"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    fillers = ("".join(p) for n in (2, 3) for p in itertools.product(alphabet, repeat=n))
    for text in fillers:
        if len(vocab) >= QWEN3_REGULAR_TOKENS:
            break
        vocab.setdefault(text, len(vocab))
    spec["added_tokens"] = [
        {
            "id": QWEN3_REGULAR_TOKENS + i,
            "content": t,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": special,
        }
        for i, (t, special) in enumerate(QWEN3_ADDED_TOKENS)
    ]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(json.dumps(spec)),
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t, special in QWEN3_ADDED_TOKENS[1:] if special],
        model_max_length=131072,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    fast.chat_template = QWEN3_OFFICIAL_CHAT_TEMPLATE
    return fast


def qwen3_vocab_config(
    *,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 2,
    num_key_value_heads: int = 1,
    head_dim: int = 64,
) -> Qwen3Config:
    """A small Qwen3 with the real vocabulary: V = 151936 embedding rows, tied embeddings, eos / pad
    <|endoftext|> (151643), as the Qwen3 Base checkpoints' configs have."""
    return tiny_qwen3_config(
        QWEN3_VOCAB_SIZE,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        max_position_embeddings=40960,
        eos_token_id=QWEN3_REGULAR_TOKENS,
        pad_token_id=QWEN3_REGULAR_TOKENS,
    )
