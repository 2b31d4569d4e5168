"""The reference LLM-judge service (`canarist judge serve`) and the application-side reporter.

Deliberately imports nothing: applications import canarist.judge.reporter (standard library
only) without pulling in the service's dependencies.
"""
