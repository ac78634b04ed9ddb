#!/usr/bin/env python3
"""Which B-trees a SQLite WAL's commits wrote: `python3 benches/walpages.py <db> <db-wal>`.

Run against copies of a running gateway's database file and its `-wal`, taken together (e.g.
while `cargo bench --bench channels` runs: the gateway's data directory is a `/var/tmp/.tmp*`;
see docs/BENCHMARKS.md). With SQLite's default checkpointing the log holds the frames since it
last restarted (up to ~1,000). Reads the WAL's frames of its current generation (those whose salts match the header), groups
them by commit, and attributes each frame's page to the table or index that owns it now
(SQLite's `dbstat`, on the copy with its WAL applied). Prints, per B-tree, the frames per
commit — each frame is one 4 KiB page written — and how many distinct pages it wrote overall.
Standard library only (Python's sqlite3 carries `dbstat`).
"""
import collections
import sqlite3
import struct
import sys


def main(db: str, wal: str) -> None:
    with open(wal, "rb") as f:
        data = f.read()
    if len(data) < 32:
        sys.exit("not a WAL file: shorter than its header")
    _magic, _version, page_size, _seq, salt1, salt2, _c1, _c2 = struct.unpack(">8I", data[:32])
    commits, current, off = [], [], 32
    while off + 24 + page_size <= len(data):
        page, commit_size, s1, s2 = struct.unpack(">4I", data[off : off + 16])
        if (s1, s2) != (salt1, salt2):
            break  # frames of an earlier generation of the log
        current.append(page)
        if commit_size:
            commits.append(current)
            current = []
        off += 24 + page_size
    # Opening the copy applies its WAL (the WAL read above must be a copy of its own: SQLite
    # may checkpoint and truncate the one beside the database when the connection closes).
    con = sqlite3.connect(db)
    owner = {page: name for name, page in con.execute("SELECT name, pageno FROM dbstat")}
    con.close()
    frames, pages = collections.Counter(), collections.defaultdict(set)
    for commit in commits:
        for page in commit:
            name = owner.get(page, "(free or new)")
            frames[name] += 1
            pages[name].add(page)
    n = len(commits) or 1
    print(f"page size {page_size}; {len(commits)} commits, {sum(map(len, commits))} frames")
    print(f"{'b-tree':40} {'frames per commit':>18} {'distinct pages':>15}")
    for name, count in frames.most_common():
        print(f"{name:40} {count / n:18.2f} {len(pages[name]):15}")
    print(f"{'total':40} {sum(frames.values()) / n:18.2f} {sum(map(len, pages.values())):15}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
