"""Downstream-task data: readers for NLI, POS, NER, parsing and QA files, and their metrics."""
