"""Terminal chat with a tfchat model, streaming the replies.

    python -m serving.chat --server http://localhost:8501     # a running serving.server
    python -m serving.chat --model exports/tfchat             # load the export in this process
    python -m serving.chat --model exports/tfchat --reward-model exports/reward --best-of 4   # best of 4 replies
    python -m serving.chat --model exports/tfchat --content-filter runs/moderation
    python -m serving.chat --model exports/grounded --intent runs/intent --index runs/index   # dialogue manager
    python -m serving.chat --model exports/tagged --topic music --style happy   # a model trained with tags
    python -m serving.chat --model exports/tagged --topic music --guidance 8   # steer harder

Type a message and press Enter. Commands: `/reset` forgets the conversation,
`/system TEXT` sets a system prompt (and resets), `/exit` (or Ctrl-D) quits,
`/help` lists them. The whole history is sent each turn; the chat template
drops the oldest exchanges when it no longer fits the context. A reply the
server's content filter refused or stopped (finish reason `content_filter`)
is marked `[filtered: ...]`, and that exchange is left out of the history.
The sources of a grounded reply (a server with a dialogue manager, or
`--intent`/`--index` here) are listed under it.

A model trained with control tags steers its replies by them: `--topic
music --style happy` (or in the chat `/topic music`, `/style happy`; `/style`
alone clears it; `/tags` shows them and the model's vocabulary) tags every
following reply. An unknown value is refused in one line; the chat goes on.
`--guidance 8` (or `/guidance 8`; `/guidance` alone goes back to the
default) steers tagged replies harder (classifier-free guidance,
`tfchat.inference.guidance`; each reply decodes twice).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Iterator, TextIO

from tfchat import cli

HELP = "commands: /reset  /system TEXT  /topic VALUE  /style VALUE  /guidance N  /tags  /exit  /help"
FILTERED = "content_filter"
TAG_NAMES = ("topic", "style")  # tag names with flags; any name of the model's vocabulary has its /NAME command


class RemoteChat:
    """Streams replies from `POST /v1/chat/completions` (server-sent events)."""

    def __init__(self, url: str, timeout: float = 300.0):
        import httpx

        from serving.client import unreachable

        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout)
        self.finish_reason: str | None = None  # of the last reply
        self.sources: list = []  # of the last reply (a server with a dialogue manager)
        try:  # fail at start, not at the first message
            models = self._http.get(self.url + "/v1/models")
            models.raise_for_status()
        except (httpx.HTTPError, httpx.InvalidURL) as e:
            raise unreachable(self.url, e) from e
        try:
            self.tags: dict | None = models.json()["data"][0].get("tags")  # the served model's tag vocabulary
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            self.tags = None

    def stream(self, messages: list[dict], tags: dict | None = None, **sampling) -> Iterator[str]:
        body = {"messages": messages, "stream": True, **_openai_names(sampling), **({"tags": tags} if tags else {})}
        self.finish_reason, self.sources = None, []
        with self._http.stream("POST", self.url + "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                response.read()
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text
                raise RuntimeError(f"server error {response.status_code}: {message}")
            for line in response.iter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if isinstance(chunk.get("sources"), list):
                    self.sources = chunk["sources"]
                if "error" in chunk:
                    raise RuntimeError(chunk["error"]["message"])
                choice = chunk["choices"][0]
                self.finish_reason = choice.get("finish_reason") or self.finish_reason
                piece = choice.get("delta", {}).get("content")
                if piece:
                    yield piece


def _openai_names(sampling: dict) -> dict:
    out = dict(sampling)
    if "max_new_tokens" in out:
        out["max_tokens"] = out.pop("max_new_tokens")
    return out


class LocalChat:
    """Streams replies from an export loaded in this process."""

    def __init__(self, path: str, content_filter: str | None = None, best_of=None, dialogue=None,
                 fast: bool = True):
        from serving.backend import Backend

        self.dialogue = dialogue  # a tfchat.dialogue.manager.DialogueManager, or None
        self.sources: list = []
        self._fixed_finish = None
        self.backend = Backend(path, fast=fast)
        self.backend.best_of = best_of  # best-of-n hook (serving.best_of)
        if content_filter:
            from serving.content_filter import FilteredBackend
            from tfchat.inference.classifier import ContentFilter

            self.backend = FilteredBackend(self.backend, ContentFilter.load(content_filter))
        self._request = None
        vocabulary = getattr(self.backend, "tags", None)
        self.tags: dict | None = vocabulary.to_dict() if vocabulary is not None else None  # {name: [values]}

    @property
    def finish_reason(self) -> str | None:
        if self._fixed_finish:
            return self._fixed_finish
        done = self._request is not None and self._request.future.done() and not self._request.future.exception()
        return self._request.future.result().finish_reason if done else None

    def check(self, **sampling) -> None:
        """Raises ValueError for sampling settings this model refuses (a --max-tokens beyond its context)."""
        from serving.backend import GenRequest

        self.backend.validate(GenRequest(messages=[{"role": "user", "content": "hi"}],
                                         sampling=self.backend.defaults.replace(**sampling)))

    def stream(self, messages: list[dict], tags: dict | None = None, **sampling) -> Iterator[str]:
        from serving.backend import GenRequest

        params = self.backend.defaults.replace(**sampling)
        decision = self.dialogue.decide(messages) if self.dialogue is not None else None
        self.sources, self._fixed_finish = (decision.sources if decision else []), None
        if decision is not None and decision.reply is not None:  # a template or a refusal: no model call
            self._fixed_finish = FILTERED if decision.route == "refuse" else "stop"
            return iter([decision.reply])
        self._request = GenRequest(messages=messages, sampling=params, knowledge=decision and decision.knowledge,
                                   tags=tags or None)
        return self.backend.stream(self._request)


def tag_problem(vocabulary: dict | None, name: str, value: str) -> str | None:
    """Why `name` = `value` is not a tag of the model (one line), or None if it is."""
    from tfchat.text.control_tags import check_tags

    if vocabulary is None:
        return "this model was trained without tags"
    try:
        check_tags(vocabulary, {name: value})
    except ValueError as e:
        return str(e)
    return None


def _show_tags(tags: dict, vocabulary: dict | None) -> str:
    current = ", ".join(f"{k}: {v}" for k, v in tags.items()) or "none"
    if vocabulary is None:
        return f"(tags: {current}; this model was trained without tags)"
    known = "; ".join(f"{name}: {', '.join(values)}" for name, values in vocabulary.items())
    return f"(tags: {current}; known: {known})"


def run(chat, stdin: TextIO, stdout: TextIO, system: str | None = None, tags: dict | None = None, **sampling) -> None:
    """The read-reply loop; `tags` ({name: value}, checked by the caller) steer every reply until changed."""
    history: list[dict] = []
    tags = dict(tags or {})
    vocabulary = getattr(chat, "tags", None)
    interactive = stdin.isatty()
    print(f"tfchat  ({HELP})", file=stdout)
    while True:
        if interactive:
            stdout.write("you> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # EOF
            break
        text = line.rstrip("\n")
        if not text.strip():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # bytes that are not UTF-8, which stdin kept as surrogates
            print("(that line is not UTF-8 text; nothing was sent)", file=stdout)
            continue
        command, _, arg = text.strip().partition(" ")
        if command in ("/exit", "/quit"):
            break
        if command == "/reset":
            history = []
            print("(conversation reset)", file=stdout)
            continue
        if command == "/system":
            system, history = arg.strip() or None, []
            print(f"(system prompt {'set' if system else 'cleared'}; conversation reset)", file=stdout)
            continue
        if command == "/help":
            print(HELP, file=stdout)
            continue
        if command == "/tags":
            print(_show_tags(tags, vocabulary), file=stdout)
            continue
        if command == "/guidance":
            try:
                scale = cli.guidance(arg.strip()) if arg.strip() else None
            except argparse.ArgumentTypeError as e:
                print(f"(guidance: {e}; it stays as it was)", file=stdout)
                continue
            sampling = {k: v for k, v in sampling.items() if k != "guidance"}
            if scale is not None:
                sampling["guidance"] = scale
            print(f"(guidance: {'the default' if scale is None else f'{scale:g}'})", file=stdout)
            continue
        name = command[1:]
        if command.startswith("/") and (name in TAG_NAMES or name in (vocabulary or {})):
            value = arg.strip()
            problem = tag_problem(vocabulary, name, value) if value else None
            if not value:
                tags.pop(name, None)
                print(f"({name} cleared)", file=stdout)
            elif problem is not None:
                print(f"({problem})", file=stdout)  # the tags stay as they were
            else:
                tags[name] = value
                print(f"({name}: {value})", file=stdout)
            continue
        history.append({"role": "user", "content": text})
        messages = ([{"role": "system", "content": system}] if system else []) + history
        stdout.write("bot> ")
        stdout.flush()
        reply = []
        try:
            for piece in chat.stream(messages, **sampling, **({"tags": dict(tags)} if tags else {})):
                reply.append(piece)
                stdout.write(piece)
                stdout.flush()
        except Exception as e:  # noqa: BLE001  (keep the session alive)
            history.pop()
            print(f"\n(error: {e})", file=stdout)
            continue
        if getattr(chat, "finish_reason", None) == FILTERED:
            history.pop()  # neither the flagged message nor a cut reply goes back to the model
            print("\n[filtered: the content filter flagged this exchange; it is left out of the conversation]",
                  file=stdout)
            continue
        stdout.write("\n")
        for i, source in enumerate(getattr(chat, "sources", None) or [], 1):
            print(f"  [{i}] {source.get('title', '')}" + (f"  {source['url']}" if source.get("url") else ""),
                  file=stdout)
        history.append({"role": "assistant", "content": "".join(reply)})
    print("bye", file=stdout)


def main(argv: list[str] | None = None, stdin: TextIO | None = None, stdout: TextIO | None = None) -> int:
    parser = cli.parser("python -m serving.chat", __doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="URL of a running serving.server, e.g. http://localhost:8501")
    source.add_argument("--model", help="export path (exports/tfchat) to load in-process")
    parser.add_argument("--content-filter", default=None, metavar="DIR",
                        help="with --model: screen messages and replies with this moderation classifier")
    parser.add_argument("--intent", default=None, metavar="DIR",
                        help="with --model: route turns with this intent classifier (training.classify --task intent)")
    parser.add_argument("--index", default=None, metavar="DIR",
                        help="with --model: answer knowledge questions from this index (training.index)")
    parser.add_argument("--system", default=None, help="system prompt")
    parser.add_argument("--topic", default=None,
                        help="the replies' topic tag (a model trained with tags; /topic changes it)")
    parser.add_argument("--style", default=None,
                        help="the replies' style tag (a model trained with tags; /style changes it)")
    parser.add_argument("--plain-signatures", action="store_true",
                        help="with --model: decode with the exported XLA-free signatures instead of the fast path")
    g = parser.add_argument_group("sampling (default: the model's recommended settings)")
    g.add_argument("--max-tokens", type=cli.positive_int, default=None, help="longest reply in tokens")
    g.add_argument("--temperature", type=cli.non_negative_float, default=None, help="0 = greedy")
    g.add_argument("--top-k", type=cli.non_negative_int, default=None, help="0 = off")
    g.add_argument("--top-p", type=cli.probability, default=None, help="1 = off")
    g.add_argument("--seed", type=cli.int32, default=None, help="fixed seed (default: a new one per reply)")
    g.add_argument("--guidance", type=cli.guidance, default=None,
                   help="with --topic/--style: steer harder by classifier-free guidance (1 = off; e.g. 8)")
    from serving.server import add_best_of_flags, best_of, check_best_of_flags

    add_best_of_flags(parser)
    args = parser.parse_args(argv)
    if args.content_filter and not args.model:
        parser.error("--content-filter is for --model (a server applies its own: serving.server --content-filter)")
    if (args.intent or args.index) and not args.model:
        parser.error("--intent and --index are for --model (a server routes its own: serving.server --intent/--index)")
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    given = {"max_new_tokens": args.max_tokens, "temperature": args.temperature, "top_k": args.top_k,
             "top_p": args.top_p, "seed": args.seed, "guidance": args.guidance}
    sampling = {k: v for k, v in given.items() if v is not None}

    def body() -> int:
        if args.server and args.reward_model:
            raise cli.UsageError("--reward-model works with --model (a server reranks with its own --reward-model)")
        check_best_of_flags(args)
        if args.model:
            cli.setup(args.verbose)
        dialogue = None
        if args.intent or args.index:
            from tfchat.dialogue.manager import DialogueManager

            dialogue = DialogueManager.load(args.intent, args.index)
        if args.server:
            chat = RemoteChat(args.server)
        else:
            chat = LocalChat(args.model, args.content_filter, best_of(args), dialogue, fast=not args.plain_signatures)
            try:  # at start, not as an error on every reply
                chat.check(**{k: v for k, v in sampling.items() if k != "guidance"})
            except ValueError as e:
                raise cli.UsageError(str(e)) from None
        tags = {name: getattr(args, name) for name in TAG_NAMES if getattr(args, name) is not None}
        for name, value in tags.items():
            problem = tag_problem(chat.tags, name, value)
            if problem is not None:
                raise cli.UsageError(f"--{name} {value}: {problem}")
        run(chat, stdin, stdout, system=args.system, tags=tags, **sampling)
        return 0

    return cli.run(body)


if __name__ == "__main__":
    sys.exit(main())
