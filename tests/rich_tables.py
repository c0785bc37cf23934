"""Reading the tables rich prints, so tests can compare printed rows exactly."""


def table_rows(output: str) -> list[list[str]]:
    """The stripped cells of every body row of the rich tables in ``output``, in order."""
    return [
        [cell.strip() for cell in line.split("\u2502")[1:-1]]
        for line in output.splitlines()
        if line.startswith("\u2502")
    ]
