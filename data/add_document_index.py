"""Add the document-start index to a dataset prepared before the corpus engine wrote one:

    python data/add_document_index.py data/tinystories

It scans each token file for the end-of-text token and writes <file>.docs.bin beside it (the offsets where documents
start), then lists them in meta.json. sampling='documents' and attention_mask='document' need it."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from corpus import PrepareError, add_document_index, die  # noqa: E402

if __name__ == '__main__':
    if len(sys.argv) != 2:
        die("usage: python data/add_document_index.py DATA_DIR")
    try:
        meta = add_document_index(sys.argv[1])
    except PrepareError as e:
        die(str(e))
    end = meta['document_index']['end_token']
    where = f"documents end at token {end}" if end is not None else "no end-of-text token: each split is one document"
    print(f"{sys.argv[1]}: document index written ({where})")
