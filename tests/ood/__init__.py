"""Tests of skuscale.ood."""
