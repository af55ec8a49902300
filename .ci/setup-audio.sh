#!/usr/bin/env bash
# Give this machine a microphone that tests can talk into.
#
# Installs PulseAudio, the PortAudio library and ALSA's pulse plugin (apt-get,
# only what is missing), starts a PulseAudio daemon, and makes a null sink's
# monitor the default source. PortAudio's default input (ALSA "default" ->
# pulse) then records whatever is played into the null sink (paplay/pacat),
# which is how tests/test_microphone.py exercises real capture.
#
# Idempotent: safe to run again; a daemon already running is reused.
set -euo pipefail

SINK=edgeast_null

need=()
command -v pulseaudio >/dev/null || need+=(pulseaudio)
command -v pactl >/dev/null || need+=(pulseaudio-utils)
ldconfig -p | grep -q 'libportaudio\.so' || need+=(libportaudio2)
compgen -G '/usr/lib/*/alsa-lib/libasound_module_pcm_pulse.so' >/dev/null || need+=(libasound2-plugins)
if ((${#need[@]})); then
    echo "setup-audio: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ALSA's default device goes through PulseAudio (the plugin package ships this
# as a conf.d snippet on Debian; write it if the system lacks one).
if [ ! -e /etc/alsa/conf.d/99-pulse.conf ] && [ ! -e "$HOME/.asoundrc" ]; then
    cat >"$HOME/.asoundrc" <<'EOF'
pcm.!default { type pulse }
ctl.!default { type pulse }
EOF
fi

# Root (CI containers) may run a per-user daemon; PulseAudio warns and works.
# soxr-vhq: when a client asks for another rate (a 48 kHz capture), PulseAudio's
# default resampler (speex-float-1) would dull the top of the 8 kHz band.
if ! pactl info >/dev/null 2>&1; then
    pulseaudio --daemonize=yes --exit-idle-time=-1 --disallow-exit=yes --resample-method=soxr-vhq \
        --log-target=stderr --log-level=error 2>/dev/null || true
    for _ in $(seq 50); do
        pactl info >/dev/null 2>&1 && break
        sleep 0.1
    done
    pactl info >/dev/null 2>&1 || { echo "setup-audio: pulseaudio did not start; run 'pulseaudio -vvv' to see why" >&2; exit 1; }
fi

# A suspended source takes seconds to wake and then delivers audio late for the
# whole stream; a test microphone must always be on.
if pactl list short modules | grep -q module-suspend-on-idle; then
    pactl unload-module module-suspend-on-idle
fi

if ! pactl list short sinks | grep -q "\b$SINK\b"; then
    pactl load-module module-null-sink sink_name=$SINK rate=16000 channels=1 \
        sink_properties=device.description=edgeast-null >/dev/null
fi
pactl set-default-sink $SINK
pactl set-default-source $SINK.monitor
echo "setup-audio: PulseAudio ready; default sink $SINK, default source $SINK.monitor"
