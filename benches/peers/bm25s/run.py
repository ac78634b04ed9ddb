"""bm25s baseline for `cargo bench --bench retrieval` (Switchboard).

Reads chunks (one JSON string per line) and queries (one per line) from the files named in argv,
indexes the chunks with bm25s (English stop words, the library's default tokenizer), runs every
query for the top 5, and prints one JSON line: index seconds, queries/s, p50 and p99 latency (ms).
"""
import json
import sys
import time

import bm25s


def main():
    chunks = [json.loads(line) for line in open(sys.argv[1], encoding="utf-8")]
    queries = [json.loads(line) for line in open(sys.argv[2], encoding="utf-8")]
    started = time.perf_counter()
    retriever = bm25s.BM25()
    retriever.index(bm25s.tokenize(chunks, stopwords="en", show_progress=False), show_progress=False)
    index_s = time.perf_counter() - started
    latencies = []
    for q in queries:
        t = time.perf_counter()
        tokens = bm25s.tokenize([q], stopwords="en", show_progress=False)
        retriever.retrieve(tokens, k=5, show_progress=False)
        latencies.append((time.perf_counter() - t) * 1000)
    total = sum(latencies) / 1000
    latencies.sort()
    pick = lambda p: latencies[min(len(latencies) - 1, round((len(latencies) - 1) * p))]
    print(json.dumps({"index_s": index_s, "qps": len(queries) / total, "p50_ms": pick(0.5), "p99_ms": pick(0.99)}))


if __name__ == "__main__":
    main()
