"""Weak supervision for the intent classifier: labelling functions over real text, never the gold set.

Why weak labels: no licensed corpus carries developer-intent labels, but real text with a
recognisable shape does (a Stack Exchange title that quotes an exception, a tldr task
for a named command, a CoNaLa title that names pandas). Each labelling function (LF)
votes a label or abstains; votes are combined by priority tier (a conflict inside the
winning tier drops the text: not confident), classes are capped for balance, and every
text that equals or nearly equals a held-out benchmark text (all 624 intent gold texts,
CoNaLa test, CoSQA queries, QA titles) is removed before anything trains on it.

Sources (all offline, under ``shared/corpora``): CoNaLa train titles; Stack Exchange
question titles and tags (streamed, PostTypeId=1); tldr-pages task descriptions;
standard-library docstring summaries; standard-library exception messages, produced by
running small snippets that raise; and refactor/recall/plan templates filled with real
nouns (function names, module paths, library and command names) taken from those
sources. Every record keeps its source and LF.
"""

from __future__ import annotations

import html
import importlib
import inspect
import json
import logging
import random
import re
import sys
import tarfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from apex_models.data.decontam import BenchmarkTexts, Decontaminator, load_benchmark_texts, normalize_text
from apex_models.data.task_data import save_splits

log = logging.getLogger(__name__)

LABELS = ("code_search", "api_usage", "debug_error", "explain_concept", "plan_task", "recall_memory",
          "config_setup", "refactor_review", "out_of_scope")


# ---------------------------------------------------------------------------------------------
# Labelling functions: text -> label or None (abstain). Each has a tier: the lowest tier
# that votes wins; two different labels in that tier mean "not confident".
# ---------------------------------------------------------------------------------------------

def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


_ERROR = _rx(r"\b(error|errors|exception|traceback|fails?|failed|failing|failure|not working|doesn'?t work|"
             r"does not work|won'?t work|crash(es|ed)?|stuck|hangs?|broken|unexpected|invalid|cannot|can'?t|"
             r"unable to|refused|timed? ?out|bug|wrong|mismatch|rejected|\w+error|\w+exception)\b")
_SETUP = _rx(r"\b(install(ing|ed|ation)?|setup|set up|setting up|configur(e|ing|ation)|config|deploy(ing|ment)?|"
             r"command not found|not recognized as|path variable|environment variable|env var|upgrad(e|ing)|"
             r"docker(file)?|build from source|compil(e|ing) from|provision(ing)?|dev ?container|"
             r"run(ning)? a (relay|node|stake pool)|sync(ing)? (the )?node|systemd|nginx|proxy)\b")
_DESIGN = _rx(r"\b(design(ing)?|architecture|architect|best (way|practice)s? (to|for) (structure|organi[sz]e|build|"
              r"implement|design|set up|approach)|steps (to|for) (build|create|make|implement|develop)|"
              r"how (should|would) (i|we) (structure|build|design|approach|implement|organi[sz]e)|roadmap|"
              r"workflow for|pipeline for|strategy for)\b")
_CONCEPT = _rx(r"^(what is|what are|what's|whats|why|how does|how do (?!i\b|you\b|we\b)\w+ work|"
               r"difference between|what'?s the difference|is there a difference|how is .* different|"
               r"what does .* mean|can someone explain|explain)\b")
_OFFTOPIC = _rx(r"\b(price|prices|priced|worth|invest(ing|ment|or)?|buy(ing)?|sell(ing)?|exchanges?|wallets?|"
                r"daedalus|yoroi|nami|ledger|trezor|rewards?|delegat(e|ion|ing)|tax(es)?|career|jobs?|salary|"
                r"hire|hiring|ethic(s|al)?|moral|future of|society|legal|lawsuit|regulat(ion|ors?)|governance|"
                r"vote|voting|coinbase|binance|seed phrase|recovery phrase|airdrop|scam|market cap|"
                r"copyright|religio\w*|politic\w*|conscious(ness)?|sentient|human(s|ity)?|art(ists?)?|"
                r"essay|homework|poem|story|novel|subscription|pricing|free tier|account|login|sign ?up)\b")
_DEV = _rx(r"\b(programmatic(ally)?|api|cli|sdk|code|coding|script|smart contracts?|plutus|haskell|python|"
           r"javascript|typescript|rust|java|library|libraries|function|endpoint|serializ\w*|compile|json|"
           r"cbor|datum|redeemer|validator|transactions?|txs?|utxos?|nodes?|query|db-sync|ogmios|blockfrost|"
           r"developers?|develop\w*|contracts?|protocols?|address(es)?|keys?|hash(es)?|blocks?|mint(ing)?|nfts?|"
           r"metadata|policy|faucet|testnet|mainnet|hydra|ouroboros|epochs?|slots?|"
           r"cardano-cli|cardano-node|fine-?tun\w*|training|train|model|embedding|token(izer|s)?|prompt|"
           r"langchain|openai|huggingface|llama|gpt|pytorch|tensorflow|inference|dataset|vector|rag)\b")
_HOWTO = _rx(r"^(how (to|do i|can i|do you|would i|should i)|is it possible to|best way to|way to)\b")
_BARE_NAMED = _rx(r"(`[^`]+`|\b\w+\.\w+\(?|\b\w+\(\)|--\w[\w-]*)")

# Standard-library modules whose names double as generic type or format nouns (R1: "datetime
# used as a type noun", JSON, CSV, string, queue ...) do not make a query api_usage.
_GENERIC_WORDS = {"string", "json", "csv", "xml", "re", "time", "datetime", "array", "queue", "random", "io",
                  "file", "list", "dict", "set", "math", "types", "select", "copy", "code", "signal", "token",
                  "site", "this", "email", "html", "http", "test", "heapq", "abc", "numbers", "operator",
                  "resource", "stat", "struct", "keyword", "locale", "calendar", "secrets", "trace", "symtable",
                  "errno", "glob", "binascii", "base64", "hashlib", "uuid", "zipfile", "gzip", "tarfile", "wave",
                  "colorsys", "decimal", "fractions", "statistics", "graphlib", "bisect", "enum", "dis", "ast",
                  "cmd", "mailbox", "parser", "shelve", "tty", "pty", "user", "zlib", "sched", "platform", "grp",
                  "pwd", "crypt", "audioop", "imp", "curses", "turtle", "sre", "pickle", "warnings", "weakref",
                  "textwrap", "unicodedata", "codecs", "tokenize", "contextlib", "dataclasses", "typing", "venv",
                  "builtins", "posix", "nt", "msvcrt", "winreg", "readline", "doctest"}
NAMED_LIBRARIES = {
    "pandas", "numpy", "np", "pd", "django", "flask", "matplotlib", "pyplot", "plt", "scipy", "sklearn",
    "scikit-learn", "requests", "beautifulsoup", "bs4", "selenium", "sqlalchemy", "tkinter", "pyqt", "pyqt4",
    "pyqt5", "boto", "boto3", "tensorflow", "keras", "pytorch", "torch", "opencv", "cv2", "pil", "pillow",
    "scrapy", "lxml", "dataframe", "dataframes", "series", "mechanize", "urllib2", "jinja2", "wx", "wxpython",
    "pygame", "twisted", "celery", "mysql", "mysqldb", "psycopg2", "sqlite", "mongodb", "pymongo", "redis",
    "nltk", "networkx", "sympy", "xlrd", "openpyxl", "xlwt", "gtk", "pygtk", "kivy", "tornado", "gevent", "zmq",
    "ctypes", "cython", "numba", "seaborn", "plotly", "bokeh", "docker", "kubectl", "git", "npm", "pip", "conda",
    "aws", "s3", "gcloud", "azure", "jquery", "react", "angular", "vue", "node.js", "nodejs", "express",
    "spring", "rails", "laravel", "cardano-cli", "cardano-node", "blockfrost", "plutus", "openai", "chatgpt",
    "langchain", "huggingface", "transformers", "ollama", "llama", "gpt-4", "gpt-3", "midjourney", "dall-e",
    "stable-diffusion", "ipython", "jupyter", "emacs", "vim", "regex"}
NAMED_LIBRARIES |= {m for m in sys.stdlib_module_names if not m.startswith("_") and m not in _GENERIC_WORDS}
NAMED_LIBRARIES -= {"regex"}  # the third-party module shares its name with the generic noun


def names_a_library(text: str) -> bool:
    """R1: the query names a specific package, module, function, method or CLI option."""
    if _BARE_NAMED.search(text):
        return True
    words = re.findall(r"[a-z][\w.+-]*", text.lower())
    return any(w.strip(".") in NAMED_LIBRARIES for w in words)


@dataclass(frozen=True)
class LabellingFunction:
    name: str
    tier: int
    fn: Callable[[str], str | None]
    sources: tuple[str, ...]  # the sources it applies to


def lf_setup_failure(text: str) -> str | None:
    """R2: a failure while installing or provisioning is config_setup."""
    return "config_setup" if _SETUP.search(text) and _ERROR.search(text) else None


def lf_error(text: str) -> str | None:
    return "debug_error" if _ERROR.search(text) else None


def lf_setup(text: str) -> str | None:
    return "config_setup" if _SETUP.search(text) else None


def lf_offtopic(text: str) -> str | None:
    """R6: consumer, money, career, ethics questions with no engineering marker."""
    return "out_of_scope" if _OFFTOPIC.search(text) and not _DEV.search(text) else None


def lf_design(text: str) -> str | None:
    return "plan_task" if _DESIGN.search(text) else None


def lf_concept(text: str) -> str | None:
    return "explain_concept" if _CONCEPT.search(text.strip()) else None


def lf_named_howto(text: str) -> str | None:
    """A how-to that names a tool or API is api_usage (R1)."""
    return "api_usage" if _HOWTO.search(text.strip()) and names_a_library(text) else None


def lf_conala_r1(text: str) -> str | None:
    """CoNaLa titles are coding how-tos: api_usage when a library/function is named, else code_search."""
    return "api_usage" if names_a_library(text) else "code_search"


def lf_no_dev_rule(text: str) -> str | None:
    """Lowest priority: a Stack Exchange title with no developer marker at all is out of scope."""
    return "out_of_scope" if not _DEV.search(text) and not names_a_library(text) else None


LABELLING_FUNCTIONS: tuple[LabellingFunction, ...] = (
    LabellingFunction("setup_failure", 0, lf_setup_failure, ("stackexchange", "conala")),
    LabellingFunction("offtopic", 0, lf_offtopic, ("stackexchange",)),
    LabellingFunction("error", 1, lf_error, ("stackexchange", "conala")),
    LabellingFunction("setup", 1, lf_setup, ("stackexchange", "conala")),
    LabellingFunction("design", 2, lf_design, ("stackexchange", "conala")),
    LabellingFunction("concept", 3, lf_concept, ("stackexchange",)),
    LabellingFunction("named_howto", 4, lf_named_howto, ("stackexchange",)),
    LabellingFunction("conala_r1", 5, lf_conala_r1, ("conala",)),
    LabellingFunction("no_dev_rule", 9, lf_no_dev_rule, ("stackexchange",)),
)


def apply_lfs(text: str, source: str,
              lfs: Iterable[LabellingFunction] = LABELLING_FUNCTIONS) -> tuple[str | None, str, int]:
    """(label, deciding LF, number of LFs that voted that label); label None when abstained or conflicted."""
    votes = [(lf.tier, lf.name, label) for lf in lfs if source in lf.sources
             for label in [lf.fn(text)] if label is not None]
    if not votes:
        return None, "", 0
    top = min(t for t, _, _ in votes)
    winners = {label for t, _, label in votes if t == top}
    if len(winners) > 1:
        return None, "conflict", 0
    label = winners.pop()
    name = next(n for t, n, lab in votes if t == top)
    return label, name, sum(1 for _, _, lab in votes if lab == label)


# ---------------------------------------------------------------------------------------------
# Sources: each yields (text, source, lf, label or None, meta); None means "run the LFs".
# ---------------------------------------------------------------------------------------------

@dataclass
class Candidate:
    text: str
    source: str
    label: str | None = None  # set by sources whose construction fixes the label (templates, tldr)
    lf: str = ""


def _clean(text: str) -> str:
    return " ".join(html.unescape(text or "").split())


def conala_titles(shared_dir: Path) -> list[str]:
    path = Path(shared_dir) / "corpora" / "conala" / "conala-train.json"
    if not path.is_file():
        log.warning("CoNaLa train not found at %s", path)
        return []
    return sorted({_clean(r.get("intent")) for r in json.loads(path.read_text(encoding="utf-8")) if r.get("intent")})


def stackexchange_titles(paths: Iterable[Path]) -> Iterator[tuple[str, list[str], str]]:
    """(title, tags, site) of every question, streamed (a full dump can be many GB)."""
    for path in paths:
        site = Path(path).name.split("-Posts")[0].split(".")[0]
        for _, elem in ET.iterparse(path, events=("end",)):
            if elem.tag == "row":
                if elem.get("PostTypeId") == "1" and elem.get("Title"):
                    tags = re.findall(r"<([^>]+)>", html.unescape(elem.get("Tags") or ""))
                    yield _clean(elem.get("Title")), tags, site
                elem.clear()


_SETUP_COMMANDS = {"apt", "apt-get", "aptitude", "dnf", "yum", "pacman", "brew", "pip", "pip3", "pipx", "conda",
                   "npm", "yarn", "pnpm", "gem", "cargo", "rustup", "nvm", "pyenv", "sdkmanager", "snap", "flatpak",
                   "systemctl", "update-alternatives", "ufw", "iptables", "crontab", "useradd", "chsh", "locale-gen",
                   "timedatectl", "hostnamectl", "dpkg", "rpm", "zypper", "apk", "choco", "winget", "scoop",
                   "docker-compose", "helm", "terraform", "ansible", "vagrant", "mas", "port", "asdf", "sdk"}
_SETUP_VERBS = _rx(r"^(install|uninstall|remove|upgrade|update|configure|set|enable|disable|add|register|"
                   r"initiali[sz]e|provision|deploy|start|stop|restart)\b")


def tldr_tasks(archive: Path, max_pages: int, seed: int) -> list[tuple[str, str, str]]:
    """(command, task description, platform) from tldr-pages, one or two tasks per sampled page."""
    if not Path(archive).is_file():
        log.warning("tldr archive not found at %s", archive)
        return []
    rng = random.Random(seed)
    pages: list[tuple[str, str, list[str]]] = []
    with tarfile.open(archive, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.endswith(".md") or "/pages/" not in f"/{member.name}":
                continue
            platform = member.name.split("/")[-2]
            handle = tar.extractfile(member)
            if handle is None:
                continue
            lines = handle.read().decode("utf-8", "replace").splitlines()
            title = next((ln[2:].strip() for ln in lines if ln.startswith("# ")), "")
            tasks = [ln[2:].strip().rstrip(":") for ln in lines if ln.startswith("- ")]
            if title and tasks:
                pages.append((title, platform, tasks))
    pages.sort()
    rng.shuffle(pages)
    out = []
    for title, platform, tasks in pages[:max_pages]:
        for task in rng.sample(tasks, min(2, len(tasks))):
            task = re.sub(r"\s*\[[^\]]*\]\s*|\s*\([^)]*\)\s*", " ", task)  # drop "[a]ll" style hints, asides
            task = re.sub(r"`[^`]*`", lambda m: m.group(0).strip("`"), task)
            out.append((title, " ".join(task.split()), platform))
    return out


def tldr_candidates(tasks: list[tuple[str, str, str]], seed: int) -> list[Candidate]:
    """A command task as a query: config_setup for installers and service set-up, else api_usage (R1, R2)."""
    rng = random.Random(seed)
    forms = ("{task} with {cmd}", "how to {task} using {cmd}", "{cmd} {task}", "{cmd}: {task}",
             "how do i {task} in {cmd}", "{task} {cmd} command")
    out = []
    for cmd, task, _ in tasks:
        if len(task.split()) < 3:
            continue
        first = cmd.split()[0].lower()
        label = "config_setup" if first in _SETUP_COMMANDS or _SETUP_VERBS.search(task) and _SETUP.search(task) \
            else "api_usage"
        text = rng.choice(forms).format(task=task[0].lower() + task[1:], cmd=cmd)
        out.append(Candidate(text, "tldr", label, "tldr_setup_command" if label == "config_setup" else "tldr_command"))
    return out


_DOC_MODULES = ("posixpath shlex textwrap difflib calendar urllib.parse string base64 csv email.utils fnmatch "
                "glob gzip heapq ipaddress mimetypes ntpath os platform pprint shutil statistics tarfile "
                "tempfile uuid zipfile inspect json random bisect itertools functools collections operator "
                "html datetime re copy fractions decimal hashlib secrets").split()


def stdlib_functions() -> list[tuple[str, str, str]]:
    """(module, function name, docstring first line) of public standard-library functions."""
    out = []
    for name in _DOC_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        for fname, fn in sorted(inspect.getmembers(module, callable)):
            doc = inspect.getdoc(fn) if not fname.startswith("_") else None
            if not doc:
                continue
            first = doc.strip().splitlines()[0].strip().rstrip(".")
            if 3 <= len(first.split()) <= 16 and not first.lower().startswith(("see ", "deprecated", fname)):
                out.append((name, fname, first))
    return out


def docstring_candidates(functions: list[tuple[str, str, str]], seed: int) -> list[Candidate]:
    """Docstring summaries rephrased as task queries naming only the language: code_search."""
    rng = random.Random(seed)
    verbs = {"return": "get", "returns": "get", "compute": "compute", "convert": "convert"}
    out = []
    for _, _, summary in functions:
        words = summary.split()
        head = verbs.get(words[0].lower(), words[0].lower())
        body = " ".join([head, *words[1:]])
        if names_a_library(body):
            continue
        text = rng.choice(("{b}", "python {b}", "how to {b} in python", "{b} python")).format(b=body)
        out.append(Candidate(text, "docstrings", "code_search", "docstring_summary"))
    return out


_ERROR_SNIPPETS = (
    "[][1]", "{}['user_id']", "1 / 0", "int('12a')", "None.strip()", "'total: ' + 3", "len(5)", "[].pop()",
    "next(iter([]))", "float('abc')", "__import__('json').loads('{')", "'abc'.index('z')", "undefined_name",
    "(1, 2)[5]", "max([])", "int(None)", "open('/nonexistent/config.yaml')", "__import__('no_such_module')",
    "object().missing_attr", "[1, 2].sort(key=1)", "dict([1, 2])", "'a' * 'b'", "import_me = __import__('os').getcwdx()",
    "sum(['a', 'b'])", "{}.pop('k')", "set().remove(3)", "list(range(3))['0']", "'%d' % 'x'", "b'a' + 'b'",
    "__import__('datetime').datetime.strptime('2024-13-01', '%Y-%m-%d')", "bytes('x')", "tuple(5)",
    "__import__('math').sqrt(-1)", "x = [1]; x[1.0]", "'{} {}'.format(1)", "iter(3)", "f = lambda a: a; f(1, 2)",
    "__import__('decimal').Decimal('x')", "__import__('collections').OrderedDict().popitem()",
    "__import__('pathlib').Path('/nonexistent').read_text()", "int('9' * 5000)", "chr(-1)",
    "'abc'.decode('utf-8')", "[1, 2, 3].append(1, 2)", "__import__('json').dumps(object())", "bytes([300])",
)


def stdlib_error_messages() -> list[str]:
    """Real messages: run snippets that raise and keep `ExcType: message`."""
    messages = []
    for snippet in _ERROR_SNIPPETS:
        try:
            exec(compile(snippet, "<snippet>", "exec"), {})  # noqa: S102 (fixed literals above)
        except Exception as exc:  # noqa: BLE001 (capturing is the point)
            message = f"{type(exc).__name__}: {exc}".strip()
            messages.append(message[:160])
    return sorted(set(messages))


def exception_class_names() -> list[str]:
    import builtins

    return sorted(n for n, v in vars(builtins).items()
                  if isinstance(v, type) and issubclass(v, Exception) and n.endswith(("Error", "Exception")))


_THIRD_PARTY = sorted(lib for lib in NAMED_LIBRARIES if lib not in sys.stdlib_module_names
                      and lib not in {"np", "pd", "plt", "dataframe", "dataframes", "series", "wx"})


def _nouns(functions: list[tuple[str, str, str]], tasks: list[tuple[str, str, str]],
           se_tags: list[str]) -> dict[str, list[str]]:
    """Real nouns for templates: function names, module paths, library names, concepts.

    Concepts are Stack Exchange tags and the Python reference's topic names (pydoc), so
    an explain_concept template asks about a topic that people really ask about.
    """
    import pydoc_data.topics

    funcs = sorted({f for _, f, _ in functions if len(f) > 3})
    paths = sorted({m.replace(".", "/") + ".py" for m, _, _ in functions})
    commands = sorted({c for c, _, _ in tasks if " " not in c})
    topics = {t.replace("-", " ") for t in pydoc_data.topics.topics if len(t) > 3 and not t.startswith("bltin")}
    concepts = sorted(topics | {t.replace("-", " ") for t in se_tags if len(t) > 3})
    return {"func": funcs or ["parse_config"], "path": paths or ["utils/helpers.py"],
            "lib": _THIRD_PARTY + sorted({m for m, _, _ in functions}), "cmd": commands or ["git"],
            "concept": concepts or ["closures"]}


_TEMPLATES: dict[str, tuple[str, ...]] = {
    "debug_error": (
        "{err}", "getting {err} in {func}", "{err} when I call {func}()", "why do I get {err}",
        "{lib} script fails with {exc}", "{exc} in {path} line {n}", "my {func} throws {exc} on empty input",
        "{err} after upgrading {lib}", "{func} returns None instead of a list", "{path} crashes with {exc}",
        "fix {exc} raised by {func}", "{lib} call hangs forever and never returns",
        "test for {func} fails: expected {n} got {m}", "{err} only in production",
    ),
    "refactor_review": (
        "refactor {func} to remove the duplicated branches", "can you review {path} before I merge",
        "simplify {func} in {path}", "make {func} faster, it works but is slow",
        "clean up the {lib} calls in {path}", "split {path} into smaller modules without changing behaviour",
        "rename {func} and update its callers", "is there a more idiomatic way to write {func}",
        "review my use of {lib} in {path}", "reduce the nesting in {func}",
        "extract the {lib} setup from {func} into its own function", "add type hints to {path}",
        "{func} works but looks ugly, improve it", "code review for {path} please",
        "remove dead code from {path}", "replace the loops in {func} with something cleaner",
        "tidy up {path}, it has grown too big", "any smells in {func}?",
    ),
    "recall_memory": (
        "what did we decide about {lib}", "why did we pin {lib} to {n}.{m}", "where did I save my notes on {func}",
        "which commit changed {path}", "who last touched {path}", "what was the reason we dropped {lib}",
        "when did we upgrade {lib}", "what did I write yesterday about {func}",
        "remind me what we agreed for the {lib} migration", "find my note about {lib}",
        "what was the fix we used last time for {exc}", "did we already discuss replacing {lib}",
        "what did the team say in standup about {path}", "show me my notes from the {lib} meeting",
        "what was the ticket where we changed {func}", "last week I found a workaround for {exc}, what was it",
    ),
    "plan_task": (
        "add {feature} to our app using {lib}, what are the steps", "design a {system} with {lib}",
        "plan the migration from {lib} to {lib2}", "how should we structure a project that uses {lib} and {lib2}",
        "break down building a {system} into tasks", "steps to build a {system} with {lib}",
        "we need {feature}, how do we approach it", "outline an implementation plan for {feature}",
        "architecture for a {system} on {lib}", "roadmap to move our {system} to {lib}",
    ),
    "explain_concept": (
        "what is {concept}", "how does {concept} work", "why is {concept} needed", "what are {concept}s used for",
        "difference between {concept} and {concept2}", "explain {concept} in simple terms",
        "what's the point of {concept}", "how is {concept} different from {concept2}",
        "why would anyone use {concept}", "what does {concept} mean in practice",
    ),
    "out_of_scope": (
        "what's a good name for my {pet}", "who invented the {thing}", "recommend a {genre} book",
        "tell me a joke about {thing}s", "what's the capital of {country}", "how tall is {landmark}",
        "plan a trip to {country}", "what should I cook with {food}", "how do I get better at {sport}",
        "write a birthday poem for my {relative}", "is {food} healthy", "do something", "help",
        "what time is it in {country}", "best {thing} to buy this year",
    ),
}
_FILL = {
    "feature": ["single sign-on", "a billing page", "rate limiting", "audit logs", "an admin dashboard",
                "offline mode", "multi-tenant support", "search with filters", "email notifications",
                "a plugin system", "two-factor login", "csv export", "usage analytics"],
    "system": ["notification service", "job queue", "recommendation engine", "data pipeline", "chat backend",
               "url shortener", "feature flag service", "metrics dashboard", "file upload service", "web scraper"],
    "pet": ["dog", "cat", "parrot", "hamster", "goldfish"],
    "thing": ["telephone", "bicycle", "printing press", "light bulb", "camera", "umbrella", "piano", "compass"],
    "genre": ["mystery", "history", "science fiction", "cookery", "travel"],
    "country": ["Portugal", "Japan", "Kenya", "Peru", "Norway", "Vietnam", "Canada"],
    "landmark": ["the Eiffel Tower", "Mount Kilimanjaro", "the Shard", "Table Mountain"],
    "food": ["lentils", "leftover rice", "chickpeas", "spinach", "salmon"],
    "sport": ["chess", "tennis", "running", "swimming", "climbing"],
    "relative": ["aunt", "brother", "grandmother", "colleague"],
}


def template_candidates(label: str, n: int, nouns: dict[str, list[str]], errors: list[str],
                        exceptions: list[str], seed: int) -> list[Candidate]:
    """`n` distinct texts from the label's templates, filled with real nouns, seeded."""
    rng = random.Random(f"{seed}-{label}")
    seen: set[str] = set()
    out: list[Candidate] = []
    for _ in range(n * 20):
        if len(out) >= n:
            break
        template = rng.choice(_TEMPLATES[label])
        values = {k: rng.choice(v) for k, v in {**nouns, **_FILL}.items()}
        values.update(lib2=rng.choice(nouns["lib"]), concept2=rng.choice(nouns["concept"]), err=rng.choice(errors or ["ValueError: bad value"]),
                      exc=rng.choice(exceptions or ["ValueError"]), n=rng.randint(1, 400), m=rng.randint(0, 40))
        text = template.format(**values)
        if rng.random() < 0.3:
            text = text[0].upper() + text[1:]
        if text not in seen:
            seen.add(text)
            out.append(Candidate(text, "templates" if label != "debug_error" or "{err}" not in template
                                 else "stdlib_errors", label, f"template_{label}"))
    return out


# ---------------------------------------------------------------------------------------------
# Decontamination: exact after normalisation, word 3-gram Jaccard, word-set Jaccard.
# ---------------------------------------------------------------------------------------------

def _words(norm: str) -> str:
    """Words only: punctuation inside a text must not hide a near copy."""
    return " ".join(re.findall(r"\w+", norm))


def _trigrams(norm: str) -> set[str]:
    words = re.findall(r"\w+", norm)
    if len(words) < 3:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + 3]) for i in range(len(words) - 2)}


class TextDecontaminator:
    """Is a training text a held-out benchmark text or a near copy of one?

    Exact: :func:`normalize_text` equality. Near: word 3-gram Jaccard >= `ngram_threshold`
    (via an inverted index over 3-grams), or data/decontam.py's word-set Jaccard check.
    """

    def __init__(self, texts: set[str], ngram_threshold: float = 0.7, word_threshold: float = 0.8):
        self.texts = {normalize_text(t) for t in texts if normalize_text(t)}
        self.ngram_threshold = ngram_threshold
        self._grams: list[set[str]] = []
        self._index: dict[str, list[int]] = defaultdict(list)
        for text in sorted(self.texts):
            grams = _trigrams(text)
            for g in grams:
                self._index[g].append(len(self._grams))
            self._grams.append(grams)
        self._words = Decontaminator(BenchmarkTexts(texts={_words(t) for t in self.texts}),
                                     query_threshold=word_threshold)

    def reason(self, text: str) -> str | None:
        norm = normalize_text(text)
        if not norm:
            return None
        if norm in self.texts:
            return "exact"
        grams = _trigrams(norm)
        candidates = {i for g in grams for i in self._index.get(g, ())}
        for i in candidates:
            other = self._grams[i]
            if len(grams & other) / len(grams | other) >= self.ngram_threshold:
                return "near-ngram"
        if self._words.near_query(_words(norm)):
            return "near-words"
        return None


# ---------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------

def label_stackexchange(shared_dir: Path) -> tuple[list[Candidate], list[str]]:
    files = sorted((Path(shared_dir) / "corpora" / "stackexchange").glob("*Posts*.xml"))
    out, tags_seen = [], []
    for title, tags, site in stackexchange_titles(files):
        tags_seen.extend(tags)
        label, lf, _ = apply_lfs(title, "stackexchange")
        out.append(Candidate(title, f"stackexchange:{site}", label, lf))
    return out, sorted(set(tags_seen))


def build_intent_dataset(shared_dir: Path, out_dir: Path, weak_cfg, labels: list[str], seed: int) -> dict:
    """Write the ``train`` split (text, label, source, lf) as a Hugging Face ``DatasetDict``,
    ``report.json`` and ``README.md`` (card). The gold set is the only dev/test: this stage
    makes no held-out split of its own.

    Raises when a label ends with fewer than `min_per_class` examples: a classifier that
    never saw a class would silently never predict it.
    """
    shared_dir, out_dir = Path(shared_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    candidates: list[Candidate] = []
    for title in conala_titles(shared_dir):
        label, lf, _ = apply_lfs(title, "conala")
        candidates.append(Candidate(title, "conala-train", label, lf))
    se, se_tags = label_stackexchange(shared_dir)
    candidates += se
    tasks = tldr_tasks(shared_dir / "corpora" / "tldr" / "tldr-pages-en.tar.gz", weak_cfg.tldr_max_pages, seed)
    candidates += tldr_candidates(tasks, seed)
    functions = stdlib_functions()
    candidates += docstring_candidates(functions, seed)
    errors, exceptions = stdlib_error_messages(), exception_class_names()
    nouns = _nouns(functions, tasks, se_tags)
    per_template = weak_cfg.cap_per_class
    for label in _TEMPLATES:
        candidates += template_candidates(label, per_template, nouns, errors, exceptions, seed)

    bench = load_benchmark_texts(shared_dir, list(weak_cfg.benchmarks))
    decon = TextDecontaminator(bench.texts, weak_cfg.near_ngram_jaccard, weak_cfg.near_word_jaccard)
    dropped: Counter[str] = Counter()
    unlabelled: Counter[str] = Counter()
    by_label: dict[str, list[dict]] = defaultdict(list)
    seen: set[str] = set()
    for cand in candidates:
        norm = normalize_text(cand.text)
        if cand.label is None or cand.label not in labels:
            unlabelled[cand.source.split(":")[0]] += 1
            continue
        if not norm or norm in seen:
            dropped["duplicate"] += 1
            continue
        seen.add(norm)
        why = decon.reason(cand.text)
        if why:
            dropped[f"benchmark-{why}"] += 1
            continue
        by_label[cand.label].append({"text": cand.text, "label": cand.label, "source": cand.source, "lf": cand.lf})

    # Balance: cap each class; inside a class, real sources first, then round-robin over
    # sources so one large source (tldr) does not crowd out the others.
    rng = random.Random(seed)
    rows: list[dict] = []
    for label in labels:
        by_source: dict[str, list[dict]] = defaultdict(list)
        for row in by_label.get(label, []):
            by_source[row["source"].split(":")[0]].append(row)
        picked: list[dict] = []
        for group in (sorted(s for s in by_source if s != "templates"), ["templates"]):
            queues = [by_source[s] for s in group if by_source.get(s)]
            for queue in queues:
                rng.shuffle(queue)
            while queues and len(picked) < weak_cfg.cap_per_class:
                queues = [q for q in queues if q]
                for queue in queues:
                    if len(picked) < weak_cfg.cap_per_class:
                        picked.append(queue.pop())
        rows += picked
    rows.sort(key=lambda r: (labels.index(r["label"]), r["source"], r["text"]))
    rng.shuffle(rows)
    counts = Counter(r["label"] for r in rows)
    short = [lab for lab in labels if counts[lab] < weak_cfg.min_per_class]
    if short:
        raise ValueError(f"too few weak examples for {short}: {dict(counts)}")
    save_splits(out_dir, {"train": rows})
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        table[r["label"]][r["source"].split(":")[0]] += 1
    report = {"examples": len(rows), "per_label": {lab: counts[lab] for lab in labels},
              "per_label_source": {lab: dict(table[lab]) for lab in labels},
              "per_lf": dict(Counter(r["lf"] for r in rows)), "dropped": dict(dropped),
              "unlabelled_by_source": dict(unlabelled), "benchmarks_missing": bench.missing,
              "benchmark_texts": len(decon.texts)}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "README.md").write_text(_card(report, labels))
    return report


def _card(report: dict, labels: list[str]) -> str:
    sources = sorted({s for lab in labels for s in report["per_label_source"][lab]})
    lines = ["# Intent classifier training data (weak labels)", "",
             "Weak labels from labelling functions over real text (CoNaLa train titles, Stack Exchange "
             "question titles of the corpora dumps, tldr-pages tasks, standard-library docstrings and "
             "exception messages) and templates filled with nouns taken from those sources. Never the "
             "gold set: every text equal to, or a near copy of, a held-out benchmark text was dropped "
             "(normalised equality; word 3-gram Jaccard; word-set Jaccard).", "",
             "A Hugging Face `DatasetDict` (`datasets.load_from_disk`) with one split, `train`: "
             "columns text, label, source, lf (the labelling function that fired).", "",
             f"Examples: {report['examples']}. Dropped: {report['dropped']}. "
             f"Benchmarks missing: {report['benchmarks_missing'] or 'none'}.", "",
             "| label | " + " | ".join(sources) + " | total |", "|---|" + "---:|" * (len(sources) + 1)]
    for lab in labels:
        row = report["per_label_source"][lab]
        lines.append(f"| {lab} | " + " | ".join(str(row.get(s, 0)) for s in sources)
                     + f" | {report['per_label'][lab]} |")
    lines += ["", "Labelling functions used (examples per deciding LF): "
              + ", ".join(f"{k} {v}" for k, v in sorted(report["per_lf"].items())), "",
              "Licences: CoNaLa and Stack Exchange text CC BY-SA 4.0 (attribution to the upstream "
              "questions); tldr-pages CC BY 4.0; Python documentation strings and messages PSF licence."]
    return "\n".join(lines) + "\n"
