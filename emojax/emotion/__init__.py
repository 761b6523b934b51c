from emojax.emotion.answer import Answer, format_answer, parse_answer  # noqa: F401
