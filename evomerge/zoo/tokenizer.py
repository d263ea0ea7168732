"""A character-level tokenizer built with `tokenizers`, shared by every zoo model."""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from evomerge.zoo.skills import ALPHABET

SPECIAL_TOKENS = {"pad_token": "<pad>", "unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {char: index for index, char in enumerate(ALPHABET)}
    for token in SPECIAL_TOKENS.values():
        vocab[token] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
