"""Test helpers shipped with vpsadmind: fake commands, chain builders and throw-away services."""
