"""Tests of meshd.identity."""
