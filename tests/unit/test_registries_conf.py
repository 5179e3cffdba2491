"""registries.conf v2: loading, drop-ins, prefix matching, pull sources and short names."""

from __future__ import annotations

import textwrap

import pytest

from ocid.errors import ConfigError, FailedPrecondition, InvalidArgument
from ocid.image.reference import ImageReference, parse_reference
from ocid.image.registries import (
    Mirror, PullSource, RegistriesConfig, Registry, load_registries_conf,
)

SHA = "sha256:" + "b" * 64


def write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


def load(tmp_path, text: str) -> RegistriesConfig:
    return load_registries_conf(write(tmp_path / "registries.conf", text))


def sources(config: RegistriesConfig, text: str) -> list[tuple[str, bool, bool]]:
    found = config.pull_sources(parse_reference(text))
    return [(str(s.reference), s.insecure, s.mirror) for s in found]


# ---- loading -----------------------------------------------------------------------------


def test_missing_file_is_an_empty_config(tmp_path):
    config = load_registries_conf(str(tmp_path / "nope.conf"), str(tmp_path / "nope.d"))
    assert config == RegistriesConfig(path=str(tmp_path / "nope.conf"))
    assert config.short_name_mode == "enforcing"
    assert config.registries == () and config.aliases == {}
    assert config.unqualified_search_registries == ()


def test_full_file(tmp_path):
    config = load(tmp_path, """
        unqualified-search-registries = ["quay.io", "docker.io/"]
        short-name-mode = "permissive"
        credential-helpers = ["containers-auth.json"]   # known but unused
        some-future-key = 1                             # unknown keys are ignored

        [aliases]
        "fedora" = "registry.fedoraproject.org/fedora"
        "busybox" = "docker.io/busybox"

        [[registry]]
        prefix = "registry.k8s.io"
        location = "127.0.0.1:5000/k8s/"
        insecure = true

        [[registry.mirror]]
        location = "mirror.example.com/k8s"
        pull-from-mirror = "digest-only"

        [[registry.mirror]]
        location = "10.0.0.1:5000/k8s"
        insecure = true

        [[registry]]
        location = "blocked.example.com"
        blocked = true
    """)
    assert config.unqualified_search_registries == ("quay.io", "docker.io")
    assert config.short_name_mode == "permissive"
    assert config.aliases == {"fedora": "registry.fedoraproject.org/fedora",
                              "busybox": "docker.io/library/busybox"}
    assert config.registries == (
        Registry("blocked.example.com", "blocked.example.com", blocked=True),
        Registry("registry.k8s.io", "127.0.0.1:5000/k8s", insecure=True, mirrors=(
            Mirror("mirror.example.com/k8s", pull_from_mirror="digest-only"),
            Mirror("10.0.0.1:5000/k8s", insecure=True),
        )),
    )
    assert config.registries[0].origin == str(tmp_path / "registries.conf")


def test_mirror_by_digest_only_applies_to_every_mirror(tmp_path):
    config = load(tmp_path, """
        [[registry]]
        location = "quay.io"
        mirror-by-digest-only = true
        [[registry.mirror]]
        location = "m.example.com"
    """)
    assert config.registries[0].mirrors == (
        Mirror("m.example.com", pull_from_mirror="digest-only"),)


def test_first_entry_for_a_prefix_wins(tmp_path):
    config = load(tmp_path, """
        [[registry]]
        prefix = "quay.io"
        location = "first.example.com"
        [[registry]]
        prefix = "quay.io"
        location = "second.example.com"
    """)
    assert [r.location for r in config.registries] == ["first.example.com"]


def test_v1_format_is_converted(tmp_path):
    config = load(tmp_path, """
        [registries.search]
        registries = ["quay.io", "docker.io"]
        [registries.insecure]
        registries = ["localhost:5000"]
        [registries.block]
        registries = ["evil.example.com", "localhost:5000"]
    """)
    assert config.unqualified_search_registries == ("quay.io", "docker.io")
    assert config.registries == (
        Registry("evil.example.com", "evil.example.com", blocked=True),
        Registry("localhost:5000", "localhost:5000", insecure=True, blocked=True),
    )


def test_dropins_merge_in_lexical_order(tmp_path):
    main = write(tmp_path / "registries.conf", """
        unqualified-search-registries = ["quay.io"]
        short-name-mode = "disabled"
        [aliases]
        "a" = "quay.io/a"
        "b" = "quay.io/b"
        [[registry]]
        location = "quay.io"
        [[registry]]
        location = "keep.example.com"
    """)
    dropins = tmp_path / "registries.conf.d"
    dropins.mkdir()
    write(dropins / "10-first.conf", """
        unqualified-search-registries = ["one.example.com"]
        [aliases]
        "a" = "one.example.com/a"
        [[registry]]
        location = "quay.io"
        insecure = true
    """)
    write(dropins / "20-second.conf", """
        unqualified-search-registries = ["two.example.com", "docker.io"]
        [aliases]
        "b" = ""
        "c" = "two.example.com/c"
    """)
    write(dropins / "30-ignored.txt", "not toml [[[")
    (dropins / "40-dir.conf").mkdir()
    config = load_registries_conf(main, str(dropins))
    assert config.unqualified_search_registries == ("two.example.com", "docker.io")
    assert config.short_name_mode == "disabled"  # not set by a drop-in: kept
    assert config.aliases == {"a": "one.example.com/a", "c": "two.example.com/c"}  # "" removed b
    assert [(r.location, r.insecure) for r in config.registries] == [
        ("keep.example.com", False), ("quay.io", True)]
    origin = config.find_registry(parse_reference("quay.io/x")).origin
    assert origin == str(dropins / "10-first.conf")
    assert config.path == main


def test_dropin_may_not_use_v1(tmp_path):
    dropins = tmp_path / "d"
    dropins.mkdir()
    write(dropins / "a.conf", '[registries.search]\nregistries = ["quay.io"]\n')
    with pytest.raises(ConfigError, match=r"a\.conf: a drop-in file must use the v2 format"):
        load_registries_conf(str(tmp_path / "none.conf"), str(dropins))


def test_dropin_dir_that_is_a_file(tmp_path):
    (tmp_path / "d").write_text("")
    with pytest.raises(ConfigError, match="cannot read drop-in directory"):
        load_registries_conf(str(tmp_path / "none.conf"), str(tmp_path / "d"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[[", "invalid TOML"),
        ('unqualified-search-registries = "quay.io"',
         "unqualified-search-registries must be an array, not 'quay.io'"),
        ("unqualified-search-registries = [1]",
         "unqualified-search-registries must be an array of strings"),
        ('unqualified-search-registries = ["quay.io/ns"]',
         "invalid unqualified-search-registries entry 'quay.io/ns': expected host[:port]"),
        ('unqualified-search-registries = ["https://quay.io"]', "URI schemes are not supported"),
        ("short-name-mode = 1", "short-name-mode must be a string, not 1"),
        ('short-name-mode = "prompt"',
         "short-name-mode 'prompt' must be one of enforcing, permissive, disabled"),
        ('aliases = "x"', "aliases must be a table, not 'x'"),
        ("[aliases]\nx = 1", "aliases.x must be a string, not 1"),
        ('[aliases]\n"quay.io/x" = "quay.io/x"', "alias 'quay.io/x' must be a short name"),
        ('[aliases]\n"x:1" = "quay.io/x"',
         "alias 'x:1' must be a short name without registry, tag"),
        ('[aliases]\n"X" = "quay.io/x"', "alias 'X': invalid image reference"),
        ('[aliases]\nx = "other/x"', "alias 'x' = 'other/x' must be fully qualified"),
        ('[aliases]\nx = "quay.io/x:1"',
         "alias 'x' = 'quay.io/x:1' must not contain a tag or digest"),
        ('[aliases]\nx = "quay.io/X"', "alias 'x': invalid image reference 'quay.io/X'"),
        ('registry = "x"', "registry must be an array, not 'x'"),
        ("registry = [1]", "registry must be an array of tables"),
        ("[[registry]]\ninsecure = true", "registry[0] sets neither location nor prefix"),
        ('[[registry]]\nlocation = "q.io"\ninsecure = "yes"',
         "registry[0].insecure must be a boolean, not 'yes'"),
        ('[[registry]]\nlocation = "q.io"\nblocked = 1',
         "registry[0].blocked must be a boolean, not 1"),
        ("[[registry]]\nlocation = 5", "registry[0].location must be a string, not 5"),
        ('[[registry]]\nlocation = "https://q.io"',
         "registry[0].location 'https://q.io': URI schemes"),
        ('[[registry]]\nprefix = "q.io"',
         "registry[0].location is unset and prefix 'q.io' is not a wildcard"),
        ('[[registry]]\nprefix = "*.q.io/ns"\nlocation = "x.io"',
         "registry[0].prefix '*.q.io/ns': a wildcard prefix must look like *.example.com"),
        ('[[registry]]\nlocation = "q.io"\npull-from-mirror = "all"',
         "registry[0].pull-from-mirror is only valid in a [[registry.mirror]]"),
        ('[[registry]]\nlocation = "q.io"\nmirror = "m.io"', "registry[0].mirror must be an array"),
        ('[[registry]]\nlocation = "q.io"\n[[registry.mirror]]\ninsecure = true',
         "registry[0].mirror[0].location is unset"),
        ('[[registry]]\nlocation = "q.io"\n'
         '[[registry.mirror]]\nlocation = "m.io"\npull-from-mirror = "some"',
         "registry[0].mirror[0].pull-from-mirror 'some' must be one of all, digest-only, tag-only"),
        ('[[registry]]\nlocation = "q.io"\nmirror-by-digest-only = true\n'
         '[[registry.mirror]]\nlocation = "m.io"\npull-from-mirror = "all"',
         "cannot be combined with the registry's mirror-by-digest-only"),
        ('[[registry]]\nprefix = "a.io"\nlocation = "q.io"\n'
         '[[registry]]\nprefix = "b.io"\nlocation = "q.io"\ninsecure = true',
         "registry 'q.io' is defined multiple times with conflicting 'insecure' settings"),
        ('[registries.search]\nregistries = ["q.io"]\n[[registry]]\nlocation = "x.io"',
         "mixing the v1 format"),
        ('[registries.search]\nregistries = "q.io"',
         "registries.search.registries must be an array"),
    ],
)
def test_bad_files_name_the_file_and_the_key(tmp_path, text, message):
    path = write(tmp_path / "registries.conf", text + "\n")
    with pytest.raises(ConfigError) as info:
        load_registries_conf(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_unreadable_file(tmp_path):
    (tmp_path / "registries.conf").mkdir()
    with pytest.raises(ConfigError, match="registries.conf: cannot read: Is a directory"):
        load_registries_conf(str(tmp_path / "registries.conf"))


# ---- matching ----------------------------------------------------------------------------


MATCHING = """
    [[registry]]
    location = "registry.k8s.io"
    [[registry]]
    prefix = "registry.k8s.io/pause"
    location = "pause.example.com/p"
    [[registry]]
    prefix = "*.example.com"
    location = "wild.mirror.io"
    [[registry]]
    prefix = "*.sub.example.com"
    location = ""
    insecure = true
    [[registry]]
    location = "localhost:5000"
"""


@pytest.mark.parametrize(
    ("text", "prefix"),
    [
        ("registry.k8s.io/coredns", "registry.k8s.io"),
        ("registry.k8s.io/pause:3.9", "registry.k8s.io/pause"),  # the longest prefix wins
        ("registry.k8s.io/pause/sub", "registry.k8s.io/pause"),
        ("registry.k8s.io/pausex", "registry.k8s.io"),  # prefixes match at a '/' boundary
        ("registry.k8s.io2/pause", None),
        ("a.example.com/x", "*.example.com"),
        ("a.b.example.com:443/x", "*.example.com"),
        ("a.sub.example.com/x", "*.sub.example.com"),
        ("example.com/x", None),  # a wildcard needs a subdomain
        ("notexample.com/x", None),
        ("localhost:5000/x", "localhost:5000"),
        ("localhost/x", None),
        ("localhost:50000/x", None),
        ("busybox", None),
    ],
)
def test_find_registry_longest_prefix(tmp_path, text, prefix):
    registry = load(tmp_path, MATCHING).find_registry(parse_reference(text))
    assert (registry.prefix if registry else None) == prefix


def test_pull_sources_rewrite_prefix_to_location(tmp_path):
    config = load(tmp_path, """
        [[registry]]
        prefix = "registry.k8s.io"
        location = "127.0.0.1:5000/k8s"
        insecure = true
        [[registry.mirror]]
        location = "m1.example.com/mirror"
        [[registry.mirror]]
        location = "m2.example.com"
        pull-from-mirror = "digest-only"
        insecure = true
        [[registry.mirror]]
        location = "m3.example.com"
        pull-from-mirror = "tag-only"
    """)
    assert sources(config, "registry.k8s.io/pause:3.9") == [
        ("m1.example.com/mirror/pause:3.9", False, True),
        ("m3.example.com/pause:3.9", False, True),
        ("127.0.0.1:5000/k8s/pause:3.9", True, False),
    ]
    assert sources(config, f"registry.k8s.io/sig/pause@{SHA}") == [
        (f"m1.example.com/mirror/sig/pause@{SHA}", False, True),
        (f"m2.example.com/sig/pause@{SHA}", True, True),
        (f"127.0.0.1:5000/k8s/sig/pause@{SHA}", True, False),
    ]
    # Tag and digest together count as a digest pull.
    assert [s[0] for s in sources(config, f"registry.k8s.io/pause:3.9@{SHA}")] == [
        f"m1.example.com/mirror/pause:3.9@{SHA}", f"m2.example.com/pause:3.9@{SHA}",
        f"127.0.0.1:5000/k8s/pause:3.9@{SHA}"]


def test_pull_sources_namespace_prefix_and_wildcards(tmp_path):
    config = load(tmp_path, MATCHING)
    assert sources(config, "registry.k8s.io/pause/x:1") == [
        ("pause.example.com/p/x:1", False, False)]
    assert sources(config, "a.b.example.com:443/x/y:1") == [("wild.mirror.io/x/y:1", False, False)]
    # A wildcard with no location only sets options: the reference is kept.
    assert sources(config, "a.sub.example.com/x:1") == [("a.sub.example.com/x:1", True, False)]


def test_pull_sources_to_docker_hub_location_adds_library(tmp_path):
    config = load(tmp_path, '[[registry]]\nprefix = "example.com/hub"\nlocation = "docker.io"\n')
    assert sources(config, "example.com/hub/busybox:1") == [
        ("docker.io/library/busybox:1", False, False)]


def test_pull_sources_without_a_registry_entry(tmp_path):
    config = load(tmp_path, """
        [[registry]]
        prefix = "alias.example.com"
        location = "10.0.0.9:5000"
        insecure = true
    """)
    ref = parse_reference("quay.io/a/b")
    assert config.pull_sources(ref) == [PullSource(ref, insecure=False, mirror=False)]
    # A host that is only the location of an insecure entry is insecure when named directly.
    assert sources(config, "10.0.0.9:5000/x") == [("10.0.0.9:5000/x:latest", True, False)]


def test_blocked_registry(tmp_path):
    config = load(tmp_path, '[[registry]]\nlocation = "evil.io"\nblocked = true\n')
    with pytest.raises(FailedPrecondition) as info:
        config.pull_sources(parse_reference("evil.io/x"))
    assert str(info.value) == f"registry evil.io is blocked in {tmp_path / 'registries.conf'}"


def test_blocked_registry_names_the_dropin(tmp_path):
    dropins = tmp_path / "d"
    dropins.mkdir()
    write(dropins / "block.conf", '[[registry]]\nlocation = "evil.io"\nblocked = true\n')
    config = load_registries_conf(str(tmp_path / "none.conf"), str(dropins))
    blocked = f"registry evil.io is blocked in {dropins / 'block.conf'}"
    with pytest.raises(FailedPrecondition, match=blocked):
        config.pull_sources(parse_reference("evil.io/x"))


def test_rewrite_to_an_invalid_location(tmp_path):
    config = load(tmp_path, '[[registry]]\nprefix = "q.io"\nlocation = "bad_host"\n')
    with pytest.raises(InvalidArgument, match="location 'bad_host' turns q.io/x into invalid name"):
        config.pull_sources(parse_reference("q.io/x"))


@pytest.mark.parametrize(
    ("host", "insecure"),
    [
        ("registry.k8s.io", True),      # the entry matched by prefix decides (containers/image)
        ("registry.k8s.io2", False),
        ("localhost:5000", True),       # prefix == location
        ("127.0.0.1:5000", True),       # the location of registry.k8s.io
        ("10.0.0.1:5000", True),        # an insecure mirror's host
        ("mirror.example.com", False),
        ("a.sub.example.com", True),    # wildcard prefix
        ("quay.io", False),
    ],
)
def test_is_insecure(tmp_path, host, insecure):
    config = load(tmp_path, """
        [[registry]]
        prefix = "registry.k8s.io"
        location = "127.0.0.1:5000/k8s"
        insecure = true
        [[registry.mirror]]
        location = "10.0.0.1:5000/k8s"
        insecure = true
        [[registry.mirror]]
        location = "mirror.example.com"
        [[registry]]
        location = "localhost:5000"
        insecure = true
        [[registry]]
        prefix = "*.sub.example.com"
        insecure = true
    """)
    assert config.is_insecure(host) is insecure


# ---- short names -------------------------------------------------------------------------


def resolved(config: RegistriesConfig, text: str) -> list[str]:
    return [str(r) for r in config.resolve(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("quay.io/a/b", ["quay.io/a/b:latest"]),
        ("docker.io/busybox:1", ["docker.io/library/busybox:1"]),
        ("localhost/x", ["localhost/x:latest"]),
        ("docker://quay.io/a", ["quay.io/a:latest"]),
    ],
)
def test_resolve_fully_qualified_names_as_they_are(text, expected):
    config = RegistriesConfig(unqualified_search_registries=("a.io", "b.io"))
    assert resolved(config, text) == expected


def test_resolve_without_search_registries_is_docker_compatible():
    config = RegistriesConfig()
    assert resolved(config, "busybox") == ["docker.io/library/busybox:latest"]
    assert resolved(config, "user/app:1") == ["docker.io/user/app:1"]
    assert resolved(config, f"busybox@{SHA}") == [f"docker.io/library/busybox@{SHA}"]


def test_resolve_with_one_search_registry():
    config = RegistriesConfig(unqualified_search_registries=("quay.io",))
    assert resolved(config, "busybox:1") == ["quay.io/busybox:1"]
    assert resolved(config, "docker://user/app") == ["quay.io/user/app:latest"]
    hub = RegistriesConfig(unqualified_search_registries=("docker.io",))
    assert resolved(hub, "busybox") == ["docker.io/library/busybox:latest"]


def test_resolve_alias_keeps_tag_and_digest():
    config = RegistriesConfig(unqualified_search_registries=("a.io", "b.io"),
                              aliases={"fedora": "registry.fedoraproject.org/fedora",
                                       "team/app": "quay.io/team/app"})
    assert resolved(config, "fedora") == ["registry.fedoraproject.org/fedora:latest"]
    assert resolved(config, "fedora:39") == ["registry.fedoraproject.org/fedora:39"]
    assert resolved(config, f"fedora:39@{SHA}") == [f"registry.fedoraproject.org/fedora:39@{SHA}"]
    assert resolved(config, f"fedora@{SHA}") == [f"registry.fedoraproject.org/fedora@{SHA}"]
    assert resolved(config, "team/app:2") == ["quay.io/team/app:2"]


def test_resolve_alias_loaded_from_file(tmp_path):
    config = load(tmp_path, """
        unqualified-search-registries = ["a.io", "b.io"]
        [aliases]
        "busybox" = "docker.io/library/busybox"
    """)
    assert config.resolve("busybox:1.36") == [
        ImageReference("docker.io", "library/busybox", "1.36")]


def test_resolve_ambiguous_short_name_is_refused_when_enforcing(tmp_path):
    config = load(tmp_path, 'unqualified-search-registries = ["quay.io", "docker.io"]\n')
    with pytest.raises(InvalidArgument) as info:
        config.resolve("busybox")
    assert str(info.value) == (
        "short name 'busybox' is ambiguous: it could be quay.io/busybox:latest, "
        "docker.io/library/busybox:latest; use a fully qualified name or add an alias in "
        f"{tmp_path / 'registries.conf'}")


@pytest.mark.parametrize("mode", ["permissive", "disabled"])
def test_resolve_ambiguous_short_name_lists_all_candidates(mode):
    config = RegistriesConfig(
        unqualified_search_registries=("quay.io", "docker.io", "localhost:5000"),
        short_name_mode=mode)
    assert resolved(config, "busybox:1") == [
        "quay.io/busybox:1", "docker.io/library/busybox:1", "localhost:5000/busybox:1"]


@pytest.mark.parametrize("text", ["BusyBox", "0123456789abcdef" * 4, "busybox:-x", ""])
def test_resolve_rejects_invalid_names(text):
    with pytest.raises(InvalidArgument, match="invalid image reference"):
        RegistriesConfig(unqualified_search_registries=("quay.io",)).resolve(text)
