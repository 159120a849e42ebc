"""Speak one text with espeak-ng's library, in a process of its own: `kebr_core.speech` runs this file.

libespeak-ng keeps state from one utterance to the next in function statics that no API call resets
(e.g. the pitch flutter's phase in wavegen.c), so the same text comes out a few samples different
after other texts; a fresh process per text keeps earlier texts out of it, as with the `espeak-ng`
program. The library's own random generator (espeak_rand: wavegen.c's breath noise, in voices with
a `breath` line such as the variant f3, not m3) is seeded by espeak_ng_Initialize with time(NULL):
the same text came out different from one wall-clock second to the next, and so did the demo's f3
clips, their features and its model. SEED reseeds it after initialising (espeak_ng_SetRandSeed,
exported since 1.52). Only the standard library and `espeakng_loader` are imported, to start fast.

    python espeak_worker.py VOICE RATE PITCH < text (UTF-8)
    → stdout: the sample rate (uint32), then 16-bit mono samples, both in native byte order
    → on failure: one sentence on stderr, exit status 1
"""

import ctypes
import struct
import sys

# speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_Synth returns when the whole text has gone through the callback
INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
POS_CHARACTER = 1
CHARS_UTF8 = 1
ENDPAUSE = 0x1000  # the pause after the last clause that the espeak-ng program adds too
PARAM_RATE, PARAM_PITCH = 1, 3
SEED = 1  # espeak_ng_SetRandSeed's seed: any fixed value makes a text's samples the same in every run
# int callback(short *wav, int numsamples, espeak_EVENT *events): 0 goes on, 1 aborts.
SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


def speak(text: str, voice: str, rate: int, pitch: int) -> tuple[int, bytes]:
    """(sample rate, 16-bit samples) of espeak-ng saying `text`. Raises RuntimeError with a sentence."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    data = espeakng_loader.get_data_path()
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [SynthCallback]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                 ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), INITIALIZE_DONT_EXIT)
    if sample_rate <= 0:
        raise RuntimeError(f"espeak-ng could not start with its data folder {data} (error {sample_rate}).")
    lib.espeak_ng_SetRandSeed(SEED)  # after espeak_Initialize, which seeds it with the time of day
    chunks: list[bytes] = []

    def collect(wav, n: int, events) -> int:
        if n > 0:
            chunks.append(ctypes.string_at(wav, 2 * n))
        return 0

    callback = SynthCallback(collect)  # a name keeps it alive while the library holds its pointer
    lib.espeak_SetSynthCallback(callback)
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
        raise RuntimeError(f"espeak-ng has no voice {voice!r} (e.g. en-us, en-us+m3, en-us+f3).")
    lib.espeak_SetParameter(PARAM_RATE, rate, 0)
    lib.espeak_SetParameter(PARAM_PITCH, pitch, 0)
    encoded = text.encode("utf-8") + b"\0"
    status = lib.espeak_Synth(encoded, len(encoded), 0, POS_CHARACTER, 0, CHARS_UTF8 | ENDPAUSE, None, None)
    if status != 0:
        raise RuntimeError(f"espeak-ng could not synthesise {text!r} (error {status}).")
    return sample_rate, b"".join(chunks)


if __name__ == "__main__":
    try:
        sample_rate, pcm = speak(sys.stdin.buffer.read().decode("utf-8"), sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
    except (ImportError, OSError) as e:
        sys.stderr.write(f"espeak-ng's library from the espeakng-loader package could not be loaded ({e}).\n")
        sys.exit(1)
    except RuntimeError as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(1)
    sys.stdout.buffer.write(struct.pack("=I", sample_rate) + pcm)
