"""Evaluation harness: benchmark datasets with spoken questions (HotpotQA, RGB), answer and
retrieval metrics, a runner that drives the conversation engine per question, and reports."""
