"""Speech: `speak` (through the audio device), `save` (a WAV file) and an `announcer` that
reads out a swarm's news; when speech cannot work, `VoiceUnavailable` names the fix and an
announcer stays silent, so nothing here crashes a swarm (how it is built: docs/guide.md).
The speech engine lives in `timmy.voice.speech`, what to say in `timmy.voice.news`, the
announcer in `timmy.voice.announcing`; every public name is here.
"""

from timmy.errors import VoiceUnavailable
from timmy.voice.announcing import EXIT_FLUSH_SECONDS as EXIT_FLUSH_SECONDS
from timmy.voice.announcing import Announcer, announcer
from timmy.voice.speech import ESPEAK_HINT as ESPEAK_HINT
from timmy.voice.speech import INSTALL_HINT as INSTALL_HINT
from timmy.voice.speech import MAX_TEXT as MAX_TEXT
from timmy.voice.speech import NO_DEVICE_HINT as NO_DEVICE_HINT
from timmy.voice.speech import PLAYERS as PLAYERS
from timmy.voice.speech import SYNTH_TIMEOUT as SYNTH_TIMEOUT
from timmy.voice.speech import audio_output, check, save, speak

__all__ = ["Announcer", "VoiceUnavailable", "announcer", "audio_output", "check", "save",
           "speak"]
