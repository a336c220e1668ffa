"""Pieces shared by every role: settings, logging, wire-format constants, process helpers."""
