"""permessage-deflate (RFC 7692): negotiation, inflate/deflate, interop with websockets."""

from __future__ import annotations

import itertools
import os
import pickle
import random
import tracemalloc
import zlib

import pytest
from websockets.exceptions import NegotiationError
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
    ServerPerMessageDeflateFactory,
)
from websockets.frames import Frame, Opcode
from websockets.headers import build_extension, parse_extension

from simplew._fast.deflate import (
    Deflater,
    DeflateSettings,
    InflateError,
    Inflater,
    MessageTooBig,
    deflate_once,
    deflate_standalone,
    negotiate,
)

TRAILER = b"\x00\x00\xff\xff"
MiB = 1 << 20


def text(n: int, seed: int = 0) -> bytes:
    """Compressible but not trivial data (words from a small vocabulary)."""
    rng = random.Random(seed)
    words = [bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(2, 8))) for _ in range(300)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def messages(seed: int = 1, count: int = 40) -> list[bytes]:
    """Messages that repeat each other, so context takeover matters."""
    rng = random.Random(seed)
    base = [text(rng.randint(1, 3000), seed=i) for i in range(5)]
    out = [b"", b"x", rng.randbytes(700)]
    for _ in range(count):
        msg = rng.choice(base)
        out.append(msg[rng.randint(0, len(msg) // 2) :] + rng.randbytes(rng.randint(0, 50)))
    return out


# --------------------------------------------------------------------------
# negotiation

PMD = "permessage-deflate"

NEGOTIATION = [
    # (request header, server options, response header, settings key)
    (None, {}, None, None),
    ("", {}, None, None),
    ("foo, bar; baz=1", {}, None, None),
    (PMD, {"enabled": False}, None, None),
    (PMD, {}, PMD, (False, False, 15, 15)),
    ("x-webkit-deflate-frame, " + PMD, {}, PMD, (False, False, 15, 15)),
    # section 7.1.1: context takeover
    (
        f"{PMD}; server_no_context_takeover",
        {},
        f"{PMD}; server_no_context_takeover",
        (True, False, 15, 15),
    ),
    (
        f"{PMD}; client_no_context_takeover",
        {},
        f"{PMD}; client_no_context_takeover",
        (False, True, 15, 15),
    ),
    (
        PMD,
        {"server_no_context_takeover": True},
        f"{PMD}; server_no_context_takeover",
        (True, False, 15, 15),
    ),
    (
        PMD,
        {"client_no_context_takeover": True},
        f"{PMD}; client_no_context_takeover",
        (False, True, 15, 15),
    ),
    (
        f"{PMD}; client_no_context_takeover; server_no_context_takeover",
        {},
        f"{PMD}; server_no_context_takeover; client_no_context_takeover",
        (True, True, 15, 15),
    ),
    # section 7.1.2.1: server_max_window_bits
    (
        f"{PMD}; server_max_window_bits=10",
        {},
        f"{PMD}; server_max_window_bits=10",
        (False, False, 10, 15),
    ),
    (
        f"{PMD}; server_max_window_bits=15",
        {},
        f"{PMD}; server_max_window_bits=15",
        (False, False, 15, 15),
    ),
    (
        f"{PMD}; server_max_window_bits=12",
        {"server_max_window_bits": 9},
        f"{PMD}; server_max_window_bits=9",
        (False, False, 9, 15),
    ),
    (
        f"{PMD}; server_max_window_bits=10",
        {"server_max_window_bits": 12},
        f"{PMD}; server_max_window_bits=10",
        (False, False, 10, 15),
    ),
    (
        PMD,
        {"server_max_window_bits": 12},
        f"{PMD}; server_max_window_bits=12",
        (False, False, 12, 15),
    ),
    (
        f"{PMD}; server_max_window_bits=9",
        {},
        f"{PMD}; server_max_window_bits=9",
        (False, False, 9, 15),
    ),
    # zlib can't compress with a 256-byte window: decline, fall back to the next offer
    (f"{PMD}; server_max_window_bits=8", {}, None, None),
    (
        f"{PMD}; server_max_window_bits=8, {PMD}; server_max_window_bits=9",
        {},
        f"{PMD}; server_max_window_bits=9",
        (False, False, 9, 15),
    ),
    (f"{PMD}; server_max_window_bits=8, {PMD}", {}, PMD, (False, False, 15, 15)),
    # section 7.1.2.2: client_max_window_bits
    (f"{PMD}; client_max_window_bits", {}, PMD, (False, False, 15, 15)),
    (
        f"{PMD}; client_max_window_bits",
        {"client_max_window_bits": 10},
        f"{PMD}; client_max_window_bits=10",
        (False, False, 15, 10),
    ),
    (
        f"{PMD}; client_max_window_bits=12",
        {},
        f"{PMD}; client_max_window_bits=12",
        (False, False, 15, 12),
    ),
    (
        f"{PMD}; client_max_window_bits=12",
        {"client_max_window_bits": 10},
        f"{PMD}; client_max_window_bits=10",
        (False, False, 15, 10),
    ),
    (
        f"{PMD}; client_max_window_bits=12",
        {"client_max_window_bits": 14},
        f"{PMD}; client_max_window_bits=12",
        (False, False, 15, 12),
    ),
    (
        f"{PMD}; client_max_window_bits=8",
        {},
        f"{PMD}; client_max_window_bits=8",
        (False, False, 15, 8),
    ),
    # the client didn't announce support: client_max_window_bits MUST NOT be sent
    (PMD, {"client_max_window_bits": 10}, PMD, (False, False, 15, 15)),
    # everything at once, parameters in any order
    (
        f"{PMD}; client_max_window_bits=11; server_max_window_bits=13; "
        "client_no_context_takeover; server_no_context_takeover",
        {},
        f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
        "server_max_window_bits=13; client_max_window_bits=11",
        (True, True, 13, 11),
    ),
    # several offers: the first acceptable one wins
    (
        f"{PMD}; server_max_window_bits=10, {PMD}",
        {},
        f"{PMD}; server_max_window_bits=10",
        (False, False, 10, 15),
    ),
    (
        f"{PMD}; foo, {PMD}; client_no_context_takeover",
        {},
        f"{PMD}; client_no_context_takeover",
        (False, True, 15, 15),
    ),
    (
        f"{PMD}; server_max_window_bits=7, {PMD}; server_max_window_bits, {PMD}; server_no_context_takeover",
        {},
        f"{PMD}; server_no_context_takeover",
        (True, False, 15, 15),
    ),
    # syntax: whitespace, case, quoted values, empty list elements
    (
        f"  {PMD} ;  server_max_window_bits = 11 ;client_max_window_bits\t",
        {},
        f"{PMD}; server_max_window_bits=11",
        (False, False, 11, 15),
    ),
    (
        "PerMessage-Deflate; Server_No_Context_Takeover",
        {},
        f"{PMD}; server_no_context_takeover",
        (True, False, 15, 15),
    ),
    (
        f'{PMD}; server_max_window_bits="12"',
        {},
        f"{PMD}; server_max_window_bits=12",
        (False, False, 12, 15),
    ),
    (
        f'{PMD}; client_max_window_bits="1\\1"',
        {},
        f"{PMD}; client_max_window_bits=11",
        (False, False, 15, 11),
    ),
    (f", ,{PMD},", {}, PMD, (False, False, 15, 15)),
    (
        f'foo; bar="a, {PMD}; x", {PMD}; server_max_window_bits=14',
        {},
        f"{PMD}; server_max_window_bits=14",
        (False, False, 14, 15),
    ),
    (
        ["foo", f"{PMD}; server_no_context_takeover"],
        {},
        f"{PMD}; server_no_context_takeover",
        (True, False, 15, 15),
    ),
]

DECLINED = [
    # unknown parameters (section 7.1: decline)
    f"{PMD}; foo",
    f"{PMD}; foo=1",
    f"{PMD}; server_no_context_takeover; x-extra",
    # repeated parameters
    f"{PMD}; server_no_context_takeover; server_no_context_takeover",
    f"{PMD}; client_no_context_takeover; client_no_context_takeover",
    f"{PMD}; server_max_window_bits=10; server_max_window_bits=10",
    f"{PMD}; client_max_window_bits; client_max_window_bits=10",
    f"{PMD}; client_max_window_bits=10; CLIENT_MAX_WINDOW_BITS=10",
    # invalid values
    f"{PMD}; server_no_context_takeover=1",
    f"{PMD}; client_no_context_takeover=true",
    f'{PMD}; server_no_context_takeover=""',
    f"{PMD}; server_max_window_bits",
    f"{PMD}; server_max_window_bits=",
    f"{PMD}; server_max_window_bits=7",
    f"{PMD}; server_max_window_bits=16",
    f"{PMD}; server_max_window_bits=08",
    f"{PMD}; server_max_window_bits=010",
    f"{PMD}; server_max_window_bits=+9",
    f"{PMD}; server_max_window_bits=9.0",
    f"{PMD}; server_max_window_bits=abc",
    f'{PMD}; server_max_window_bits=""',
    f'{PMD}; server_max_window_bits=" 10"',
    f"{PMD}; server_max_window_bits=8",
    f"{PMD}; client_max_window_bits=7",
    f"{PMD}; client_max_window_bits=16",
    f"{PMD}; client_max_window_bits=0",
    f'{PMD}; client_max_window_bits=""',
    # broken syntax
    f"{PMD};",
    f"{PMD};;server_no_context_takeover",
    f"{PMD}; =10",
    f"{PMD}; server_max_window_bits=10=11",
    f'{PMD}; client_max_window_bits="10',
    f"{PMD}; client_max_window_bits 10",
    f"{PMD} server_no_context_takeover",
    f"{PMD}/1",
    "deflate-frame",
    "permessage-deflatex",
]


@pytest.mark.parametrize("header, options, response, key", NEGOTIATION)
def test_negotiate(header, options, response, key):
    answer, settings = negotiate(header, **options)
    assert answer == response
    assert (settings.key if settings is not None else None) == key


@pytest.mark.parametrize("header", DECLINED)
def test_negotiate_declines(header):
    assert negotiate(header) == (None, None)
    if header.count('"') % 2:
        return  # an unterminated quoted string runs to the end of the header
    # ... and falls back to a later acceptable offer
    answer, settings = negotiate(f"{header}, {PMD}; client_no_context_takeover")
    assert answer == f"{PMD}; client_no_context_takeover"
    assert settings.key == (False, True, 15, 15)


@pytest.mark.parametrize(
    "options",
    [
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": 16},
    ],
)
def test_negotiate_rejects_bad_configuration(options):
    with pytest.raises(ValueError):
        negotiate(PMD, **options)


CLIENT_OFFERS = [
    {
        "server_no_context_takeover": snct,
        "client_no_context_takeover": cnct,
        "server_max_window_bits": smwb,
        "client_max_window_bits": cmwb,
    }
    for snct, cnct, smwb, cmwb in itertools.product(
        (False, True), (False, True), (None, 8, 9, 12, 15), (None, True, 9, 11, 15)
    )
]
SERVER_OPTIONS = [
    {
        "server_no_context_takeover": snct,
        "client_no_context_takeover": cnct,
        "server_max_window_bits": smwb,
        "client_max_window_bits": cmwb,
    }
    for snct, cnct, smwb, cmwb in itertools.product(
        (False, True), (False, True), (9, 11, 15), (None, 8, 10, 15)
    )
]


@pytest.mark.parametrize("options", SERVER_OPTIONS, ids=lambda o: "-".join(map(str, o.values())))
def test_negotiate_like_websockets(options):
    """Same answers as websockets' server, accepted by websockets' client."""
    # 15 means "no limit" for us, None for websockets
    ws_server = ServerPerMessageDeflateFactory(
        **{name: None if value == 15 else value for name, value in options.items()}
    )
    for offer in CLIENT_OFFERS:
        client = ClientPerMessageDeflateFactory(**offer)
        header = build_extension([(client.name, client.get_request_params())])
        answer, settings = negotiate(header, **options)
        try:
            expected, _ = ws_server.process_request_params(client.get_request_params(), [])
        except NegotiationError:  # server_max_window_bits=8
            assert offer["server_max_window_bits"] == 8 and answer is None
            continue
        [(name, params)] = parse_extension(answer)
        assert name == PMD and params == expected, (offer, answer)
        if ("client_max_window_bits", "8") in params:  # websockets' client can't do 8
            with pytest.raises(NegotiationError):
                client.process_response_params(params, [])
            continue
        ext = client.process_response_params(params, [])
        assert settings.key == (
            ext.remote_no_context_takeover,
            ext.local_no_context_takeover,
            ext.remote_max_window_bits,
            ext.local_max_window_bits,
        )


# --------------------------------------------------------------------------
# settings


def test_settings():
    s = DeflateSettings(True, False, 10, 12)
    assert (
        s.server_no_context_takeover,
        s.client_no_context_takeover,
        s.server_max_window_bits,
        s.client_max_window_bits,
    ) == (True, False, 10, 12)
    assert s.key == (True, False, 10, 12)
    assert s == DeflateSettings(True, False, 10, 12) and s != DeflateSettings()
    assert len({s, DeflateSettings(True, False, 10, 12), DeflateSettings()}) == 2
    assert pickle.loads(pickle.dumps(s)) == s
    assert "server_max_window_bits=10" in repr(s)
    assert DeflateSettings().key == (False, False, 15, 15)
    with pytest.raises(AttributeError):
        s.server_max_window_bits = 15
    for bad in (
        {"server_max_window_bits": 8},
        {"server_max_window_bits": 16},
        {"client_max_window_bits": 7},
        {"client_max_window_bits": 16},
    ):
        with pytest.raises(ValueError):
            DeflateSettings(**bad)


# --------------------------------------------------------------------------
# interop: websockets' client compresses, Inflater decompresses, and back

SETTINGS = [
    DeflateSettings(snct, cnct, smwb, cmwb)
    for snct, cnct, smwb, cmwb in itertools.product((False, True), (False, True), (9, 15), (9, 15))
]
SETTINGS_IDS = ["-".join(map(str, s.key)) for s in SETTINGS]


def ws_client(settings: DeflateSettings) -> PerMessageDeflate:
    return PerMessageDeflate(
        remote_no_context_takeover=settings.server_no_context_takeover,
        local_no_context_takeover=settings.client_no_context_takeover,
        remote_max_window_bits=settings.server_max_window_bits,
        local_max_window_bits=settings.client_max_window_bits,
    )


def ws_fragments(client: PerMessageDeflate, msg: bytes, cuts: list[int]) -> list[Frame]:
    pieces = [msg[a:b] for a, b in zip([0, *cuts], [*cuts, len(msg)])]
    return [
        client.encode(
            Frame(Opcode.BINARY if i == 0 else Opcode.CONT, piece, fin=i == len(pieces) - 1)
        )
        for i, piece in enumerate(pieces)
    ]


@pytest.mark.parametrize("settings", SETTINGS, ids=SETTINGS_IDS)
def test_client_to_server(settings):
    client, inflater = ws_client(settings), Inflater(settings, MiB)
    rng = random.Random(2)
    for msg in messages():
        cuts = sorted(rng.sample(range(len(msg) + 1), min(len(msg) + 1, rng.choice((0, 1, 3)))))
        frames = ws_fragments(client, msg, cuts)
        assert frames[0].rsv1
        assert b"".join(inflater.inflate(f.data, f.fin) for f in frames) == msg


@pytest.mark.parametrize("settings", SETTINGS, ids=SETTINGS_IDS)
def test_server_to_client(settings):
    client, deflater = ws_client(settings), Deflater(settings)
    decoder = zlib.decompressobj(-settings.server_max_window_bits)  # never a larger window
    for msg in messages():
        payload = deflater.deflate(msg)
        assert client.decode(Frame(Opcode.BINARY, payload, rsv1=True)).data == msg
        if settings.server_no_context_takeover:
            decoder = zlib.decompressobj(-settings.server_max_window_bits)
        assert decoder.decompress(payload + TRAILER) == msg


def test_context_takeover_pays_off():
    msg = text(2000)
    shared, fresh = (
        Deflater(DeflateSettings()),
        Deflater(DeflateSettings(server_no_context_takeover=True)),
    )
    assert len(shared.deflate(msg)) == len(fresh.deflate(msg))
    assert len(shared.deflate(msg)) < 40 < len(fresh.deflate(msg))


@pytest.mark.parametrize("level, mem_level", [(1, 1), (6, 8), (9, 9), (0, 8), (-1, 5)])
def test_levels(level, mem_level):
    for snct in (False, True):
        settings = DeflateSettings(server_no_context_takeover=snct)
        deflater, inflater = Deflater(settings, level, mem_level), Inflater(DeflateSettings(), 0)
        for msg in messages(count=10):
            assert inflater.inflate(deflater.deflate(msg), True) == msg


def test_bytes_like():
    settings = DeflateSettings()
    deflater, inflater = Deflater(settings), Inflater(settings, MiB)
    msg = text(5000)
    for kind in (bytes, bytearray, memoryview):
        payload = deflater.deflate(kind(msg))
        assert (
            inflater.inflate(kind(payload[:100]), False)
            + inflater.inflate(kind(payload[100:]), True)
            == msg
        )
    assert deflater.deflate(memoryview(b"")) == b"\x00"


def test_empty_messages():
    settings = DeflateSettings()
    deflater, inflater = Deflater(settings), Inflater(settings, MiB)
    for msg in (b"", b"", b"abc", b"", b"abc", b""):
        assert inflater.inflate(deflater.deflate(msg), True) == msg
    # an empty final frame after data frames
    assert (
        inflater.inflate(deflater.deflate(b"abcabc"), False) + inflater.inflate(b"", True)
        == b"abcabc"
    )


# --------------------------------------------------------------------------
# RFC 7692 section 7.2.3 examples


def test_rfc_examples():
    inflater = Inflater(DeflateSettings(), MiB)
    assert inflater.inflate(bytes.fromhex("f248cdc9c90700"), True) == b"Hello"  # 7.2.3.1
    assert (
        inflater.inflate(bytes.fromhex("f248cd"), False)
        + inflater.inflate(bytes.fromhex("c9c90700"), True)
        == b"Hello"
    )
    assert (
        inflater.inflate(bytes.fromhex("f20011 0000".replace(" ", "")), True) == b"Hello"
    )  # 7.2.3.2 (takeover)
    assert (
        inflater.inflate(bytes.fromhex("000500faff48656c6c6f00"), True) == b"Hello"
    )  # 7.2.3.3 stored
    assert (
        inflater.inflate(bytes.fromhex("f248050000 00ffff cac9c90700".replace(" ", "")), True)
        == b"Hello"
    )  # 7.2.3.5
    assert inflater.inflate(bytes.fromhex("f348cdc9c9070000"), True) == b"Hello"  # 7.2.3.4 BFINAL
    # after a BFINAL block the stream is over: the next message starts a new one
    assert inflater.inflate(bytes.fromhex("f248cdc9c90700"), True) == b"Hello"
    assert inflater.inflate(bytes.fromhex("00"), True) == b""  # 7.2.3.6 empty


# --------------------------------------------------------------------------
# multicast: one compression for every client


def test_standalone_is_shared_by_every_client():
    msg = text(3000, seed=7)
    for wbits in (9, 12, 15):
        shared = deflate_standalone(msg, wbits)
        assert deflate_standalone(msg, wbits) == shared  # reused compressor, same bytes
        for settings in SETTINGS:
            if settings.server_max_window_bits < wbits:
                continue
            client, deflater = ws_client(settings), Deflater(settings)
            for i, m in enumerate(messages(seed=wbits, count=12)):
                if i % 3 == 0:
                    assert client.decode(Frame(Opcode.TEXT, shared, rsv1=True)).data == msg
                    deflater.reset()
                assert client.decode(Frame(Opcode.TEXT, deflater.deflate(m), rsv1=True)).data == m
    settings = DeflateSettings(False, True, 11, 15)
    assert (
        deflate_once(settings, msg)
        == deflate_once(settings.key, msg)
        == deflate_standalone(msg, 11)
    )
    # without context takeover a client's own frames are the shared ones
    assert Deflater(DeflateSettings(server_no_context_takeover=True)).deflate(
        msg
    ) == deflate_standalone(msg)
    assert deflate_standalone(b"") == b"\x00"
    with pytest.raises(ValueError):
        deflate_standalone(msg, 8)


def test_reset_is_needed_after_a_shared_frame():
    """Why Deflater.reset exists: the client's history holds the shared message."""
    a, shared = os.urandom(2000), os.urandom(2000)
    for reset in (True, False):
        deflater, decoder = Deflater(DeflateSettings()), zlib.decompressobj(-15)
        assert decoder.decompress(deflater.deflate(a) + TRAILER) == a
        assert decoder.decompress(deflate_standalone(shared) + TRAILER) == shared
        if reset:
            deflater.reset()
        payload = deflater.deflate(a)
        if reset:
            assert decoder.decompress(payload + TRAILER) == a
        else:
            assert decoder.decompress(payload + TRAILER) != a  # silently wrong


def test_standalone_per_thread():
    import threading

    msg, results = text(50000), []

    def work():
        results.extend(deflate_standalone(msg) for _ in range(20))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 80 and set(results) == {deflate_standalone(msg)}


# --------------------------------------------------------------------------
# limits and errors


def bomb(size: int = 10 * MiB) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = c.compress(bytes(size)) + c.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


@pytest.mark.parametrize("frame_size", [None, 100, 4096])
def test_bomb(frame_size):
    payload = bomb()
    assert len(payload) < 20_000
    inflater = Inflater(DeflateSettings(), MiB)
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooBig) as info:
            if frame_size is None:
                inflater.inflate(payload, True)
            else:
                for i in range(0, len(payload), frame_size):
                    inflater.inflate(payload[i : i + frame_size], False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # At most max_size + 1 bytes are inflated; CPython's output buffer joins
    # its blocks into the result, hence up to twice that, briefly.
    assert peak < 2.5 * MiB, peak
    assert isinstance(info.value, ValueError) and info.value.close_code == 1009
    # the next (small) message starts afresh
    assert inflater.inflate(Deflater(DeflateSettings(True)).deflate(b"ok"), True) == b"ok"


def test_size_limit_boundary():
    limit = 10_000
    for size, fits in ((limit - 1, True), (limit, True), (limit + 1, False)):
        for snct in (False, True):
            settings = DeflateSettings(snct, snct)  # the Inflater reads the Deflater's stream
            deflater, inflater = Deflater(settings), Inflater(settings, limit)
            msg = text(size)
            for _ in range(3):  # the count restarts with each message
                payload = deflater.deflate(msg)
                if fits:
                    half = len(payload) // 2
                    assert (
                        inflater.inflate(payload[:half], False)
                        + inflater.inflate(payload[half:], True)
                        == msg
                    )
                else:
                    with pytest.raises(MessageTooBig):
                        inflater.inflate(payload, True)
                    break


def test_no_limit():
    inflater = Inflater(DeflateSettings(), 0)
    assert inflater.max_size == 0
    assert inflater.inflate(bomb(3 * MiB), True) == bytes(3 * MiB)


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff\xff",  # reserved block type
        b"\x00\x05\x00\x00\x00hello",  # stored block: LEN != ~NLEN
        bytes.fromhex("f200110000"),  # refers to history the stream doesn't have
    ],
)
def test_corrupt(data):
    inflater = Inflater(DeflateSettings(), MiB)
    with pytest.raises(InflateError) as info:
        inflater.inflate(data, True)
    assert isinstance(info.value, ValueError) and info.value.close_code == 1002
    assert inflater.inflate(bytes.fromhex("f248cdc9c90700"), True) == b"Hello"


def test_client_no_context_takeover_drops_history():
    """With client_no_context_takeover the client may not refer to earlier messages."""
    inflater = Inflater(DeflateSettings(client_no_context_takeover=True), MiB)
    assert inflater.inflate(bytes.fromhex("f248cdc9c90700"), True) == b"Hello"
    with pytest.raises(InflateError):
        inflater.inflate(bytes.fromhex("f200110000"), True)
