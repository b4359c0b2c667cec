"""A tiny random causal LM with a tokenizer and a chat template, built offline for `transformers serve`.

The tokenizer is a byte-level BPE trained here on the shipped seed triples (so it has real
merges and can spell anything); the model is a 2-layer Llama. Its replies are nonsense, which
is the point: a real server's protocol, errors and timing, with replies Stage 1 must reject.
"""
from __future__ import annotations

from pathlib import Path

# A minimal chat template: each turn as "<s>role: content</s>", then the assistant's turn opened.
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


def build_tiny_chat_model(path: Path, seed: int = 0) -> Path:
    """Save a tiny LlamaForCausalLM, its tokenizer and generation config to ``path``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from datagen.captions.prompts import chat_reply_text, load_seed_triples

    corpus = [f"{s.input}\n{chat_reply_text(s.edit, s.output)}" for s in load_seed_triples()]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=512, special_tokens=["<s>", "</s>"],
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>",
                                        chat_template=CHAT_TEMPLATE)
    tokenizer.save_pretrained(path)
    torch.manual_seed(seed)
    ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=tokenizer.pad_token_id)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096, **ids)
    LlamaForCausalLM(config).save_pretrained(path)
    GenerationConfig(**ids).save_pretrained(path)
    return path
