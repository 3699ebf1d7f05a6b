"""Mirrors backend/text_processing/parsing.py: `parse_prompt_attention(text, emphasis)`, A1111's emphasis parser
(Forge's is a copy of modules/prompt_parser.py's), with emphasis "None" reading the text literally.
Simplified: delegates to the stand-in prompt_parser's parser (the same rules).
"""

from __future__ import annotations

from modules import prompt_parser


def parse_prompt_attention(text: str, emphasis: str) -> list[list]:
    if emphasis == "None":
        return [[text, 1.0]]
    return prompt_parser.parse_prompt_attention(text)
