"""
The one place tokenizers are rebuilt from a dataset's meta.json (training, sampling, evaluation).

meta.json["tokenizer"] is one of
  {"type": "char", "chars": "..."}                       token i is chars[i] ("end_of_text": true adds one more id)
  {"type": "tiktoken", "name": "gpt2"}                   OpenAI BPE (set TIKTOKEN_CACHE_DIR offline)
  {"type": "sentencepiece", "model": "tokenizer.model"}  model file next to meta.json
  {"type": "huggingface", "path": "hf-model/"}          a transformers tokenizer folder (relative to meta.json)
"""
import json
import os


class Tokenizer:
    def __init__(self, spec, data_dir='.'):
        self.spec = spec
        kind = spec['type']
        if kind == 'char':
            self.chars = spec['chars']
            self.index = {ch: i for i, ch in enumerate(self.chars)}
            # corpora of documents end each with an end-of-text id, one past the characters
            self.eot = len(self.chars) if spec.get('end_of_text') else None
            self.vocab_size = len(self.chars) + (self.eot is not None)
        elif kind == 'tiktoken':
            import tiktoken
            self.enc = tiktoken.get_encoding(spec['name'])
            self.vocab_size = self.enc.n_vocab
            self.eot = self.enc.eot_token
        elif kind == 'sentencepiece':
            import sentencepiece as spm
            path = os.path.join(data_dir, spec['model'])
            if not os.path.isfile(path):
                raise FileNotFoundError(f"SentencePiece model not found: {path}")
            self.sp = spm.SentencePieceProcessor(model_file=path)
            self.vocab_size = self.sp.get_piece_size()
            self.eot = self.sp.eos_id() if self.sp.eos_id() >= 0 else None
        elif kind == 'huggingface':
            from transformers import AutoTokenizer
            self.hf = AutoTokenizer.from_pretrained(os.path.join(data_dir, spec['path']))
            self.vocab_size = len(self.hf)
            self.eot = self.hf.eos_token_id
        else:
            raise ValueError(f"tokenizer type {kind!r} is invalid; allowed: char, tiktoken, sentencepiece, huggingface")
        self.kind = kind

    def encode(self, text):
        if self.kind == 'char':
            unknown = set(text) - self.index.keys()
            if unknown:
                raise ValueError(f"characters not in the vocabulary: {''.join(sorted(unknown))!r}")
            return [self.index[ch] for ch in text]
        if self.kind == 'tiktoken':
            return self.enc.encode_ordinary(text)
        if self.kind == 'huggingface':
            return self.hf.encode(text, add_special_tokens=False)
        return self.sp.encode(text)

    def encode_documents(self, texts):
        """Token ids of many documents, each followed by one end-of-text token, as one numpy array."""
        import numpy as np
        dtype = np.uint16 if self.vocab_size <= 65536 else np.uint32
        if self.kind == 'tiktoken' and hasattr(self.enc, 'encode_to_numpy'):
            # encode_ordinary's tokens (special-token text is plain text) straight into an array, no Python ints
            eot, parts = np.array([self.eot], dtype=np.uint32), []
            for text in texts:
                parts += [self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=()), eot]
            return np.concatenate(parts).astype(dtype)
        if self.kind == 'tiktoken':  # a loop beats encode_ordinary_batch's thread pool on short documents
            lists = [self.enc.encode_ordinary(t) for t in texts]
        elif self.kind == 'sentencepiece':
            lists = self.sp.encode(texts)
        elif self.kind == 'huggingface':
            lists = self.hf(texts, add_special_tokens=False)['input_ids']
        else:
            lists = [self.encode(t) for t in texts]
        out = np.empty(sum(len(ids) for ids in lists) + len(lists), dtype=dtype)
        position = 0
        for ids in lists:
            out[position:position + len(ids)] = ids
            position += len(ids)
            out[position] = self.eot
            position += 1
        return out

    def decode(self, ids):
        ids = [int(i) for i in ids]
        if self.kind == 'char':
            return ''.join(self.chars[i] if i < len(self.chars) else '' for i in ids)
        if self.kind == 'tiktoken':
            return self.enc.decode([i for i in ids if i < self.vocab_size])
        if self.kind == 'huggingface':
            return self.hf.decode(ids)
        return self.sp.decode([i for i in ids if i < self.vocab_size])


def read_meta(data_dir):
    with open(os.path.join(data_dir, 'meta.json')) as f:
        return json.load(f)


def load_tokenizer(data_dir, meta=None):
    meta = meta or read_meta(data_dir)
    return Tokenizer(meta['tokenizer'], data_dir)
