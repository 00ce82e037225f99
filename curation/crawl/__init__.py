"""Crawl stage: URL lists, HTML pages and WARC files in; image shards and a pool manifest out."""
