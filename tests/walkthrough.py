"""The README's walkthrough as data: its commands, exit codes and shown output."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Command:
    argv: list[str]  # after `./lab`
    exit_code: int
    shown: list[str] = field(default_factory=list)  # output lines the README shows

    def mismatch(self, output: str) -> str | None:
        """The first shown line not found, in order, in the real output; None if all are."""
        lines = [" ".join(line.split()) for line in output.splitlines()]
        position = 0
        for shown in self.shown:
            pattern = re.compile(".*".join(re.escape(part) for part in
                                           " ".join(shown.split()).split("...")))
            for index in range(position, len(lines)):
                if pattern.search(lines[index]):
                    position = index + 1
                    break
            else:
                return shown
        return None


def commands(readme: Path) -> list[Command]:
    """Every ``$ ./lab ...`` in the README's console blocks, with what follows it."""
    found: list[Command] = []
    in_console = False
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_console = line.strip() == "```console"
            continue
        if not in_console:
            continue
        if line.startswith("$ "):
            command, _, comment = line[2:].partition("#")
            words = command.split()
            assert words[0] == "./lab", f"walkthrough commands go through ./lab: {line}"
            code = re.search(r"exit (\d+)", comment)
            found.append(Command(words[1:], int(code.group(1)) if code else 0))
        elif line.strip() and line.strip() != "..." and found:
            found[-1].shown.append(line)
    return found


def docker_commands(readme: Path) -> tuple[tuple[dict[str, str], list[str]], list[str]]:
    """The README's `docker compose up` (its environment, its argv) and `down`."""
    text = readme.read_text(encoding="utf-8")
    block = text.split("## With Docker", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    up_line, down_line = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    env, argv = {}, []
    for word in up_line.split():
        if "=" in word and not argv:
            name, _, value = word.partition("=")
            env[name] = value
        else:
            argv.append(word)
    return (env, argv), down_line.split()
