"""Write: report files (JSONL, CSV, HTML) and their reader."""
