"""The multimodal world: determinism, annotations that agree with the pixels and the sound, balanced answers, and a
compositional split that really holds its pairs out."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest
from scipy import ndimage

from minipeft.datasets import world
from minipeft.datasets.world import COLORS, HELD_OUT_PAIRS, SAMPLE_RATE, SHAPES, make_clips, make_scenes

needs_espeak = pytest.mark.skipif(not world.espeak_available(),
                                  reason="espeak-ng is not installed (setup must run: apt-get install -y espeak-ng)")


@pytest.fixture(scope="module")
def scenes():
    return make_scenes(300, seed=11)


@pytest.fixture(scope="module")
def clips():
    return make_clips(40, seed=5, speech=world.espeak_available())


# ---- scenes -------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_and_text_different_seed_different():
    a, b, c = make_scenes(30, seed=1), make_scenes(30, seed=1), make_scenes(30, seed=2)
    assert a.images.tobytes() == b.images.tobytes()
    assert a.questions() == b.questions() and a.instructions() == b.instructions()
    assert a.captions("detailed") == b.captions("detailed")
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert a.images.tobytes() != c.images.tobytes()
    assert make_scenes(30, split="test", seed=1).images.tobytes() != a.images.tobytes()  # splits differ


def test_scene_k_does_not_depend_on_how_many_scenes_are_asked_for():
    few, many = make_scenes(5, seed=3), make_scenes(40, seed=3)
    assert np.array_equal(few.images, many.images[:5]) and few.scenes == many.scenes[:5]


def test_every_object_centre_has_its_annotated_colour(scenes):
    for image, scene in zip(scenes.images, scenes.scenes):
        assert 1 <= len(scene.objects) <= 4
        for obj in scene.objects:
            assert tuple(image[obj.y, obj.x]) == COLORS[obj.color]
        assert tuple(image[0, 0]) == scene.background or any(o.x - o.radius <= 0 for o in scene.objects)


def test_pixels_outside_all_objects_are_background_and_objects_are_separate_blobs(scenes):
    for image, scene in zip(scenes.images[:100], scenes.scenes[:100]):
        yy, xx = np.mgrid[:scene.image_size, :scene.image_size]
        near = np.zeros(image.shape[:2], bool)
        for o in scene.objects:
            near |= (xx - o.x) ** 2 + (yy - o.y) ** 2 <= (o.radius + 1) ** 2
        foreground = np.any(image != np.array(scene.background, np.uint8), axis=-1)
        assert not np.any(foreground & ~near)
        _, blobs = ndimage.label(foreground)  # objects never touch, so connected components are objects
        assert blobs == len(scene.objects)


def test_probe_pixels_identify_the_annotated_shape():
    """Five probe points (in units of the radius, from the shapes' geometry) tell the shapes apart:
    circle x²+y² ≤ 1, square |x|,|y| ≤ 0.7, diamond |x|+|y| ≤ 1, triangle y ≤ ½ and |x| ≤ (y+1)/√3,
    cross = two 0.94 × 0.3 bars. Each object's pixels must show its own shape's pattern."""
    probes = [(0.6, 0.6), (0.0, -0.85), (0.85, 0.0), (0.45, 0.45)]
    pattern = {"circle": (1, 1, 1, 1), "square": (1, 0, 0, 1), "diamond": (0, 1, 1, 1), "triangle": (0, 1, 0, 1),
               "cross": (0, 1, 1, 0)}
    data = make_scenes(40, seed=4, image_size=192)
    seen = set()
    for image, scene in zip(data.images, data.scenes):
        for o in scene.objects:
            got = tuple(int(tuple(image[int(round(o.y + py * o.radius)), int(round(o.x + px * o.radius))])
                            == COLORS[o.color]) for px, py in probes)
            assert got == pattern[o.shape], (o, got)
            seen.add(o.shape)
    assert seen == set(SHAPES)


def test_count_answers_match_connected_components(scenes):
    counts = [qa for qa in scenes.questions() if qa.question == "How many objects are there?"]
    assert len(counts) == len(scenes)
    for qa in counts:
        image, scene = scenes.images[qa.item], scenes.scenes[qa.item]
        _, blobs = ndimage.label(np.any(image != np.array(scene.background, np.uint8), axis=-1))
        assert qa.answer == world.NUMBER_WORDS[blobs]


def test_colour_and_shape_answers_agree_with_annotations(scenes):
    for qa in scenes.questions():
        objects = scenes.scenes[qa.item].objects
        if qa.kind == "color":  # "What colour is the (size) shape?": exactly one object fits the description
            words = qa.question.rstrip("?").split()[4:]
            fits = [o for o in objects if o.shape == words[-1] and (len(words) == 1 or o.size == words[0])]
            assert len(fits) == 1 and fits[0].color == qa.answer
        if qa.kind == "shape":
            words = qa.question.rstrip("?").split()[4:-1]  # "What shape is the (size) colour object?"
            fits = [o for o in objects if o.color == words[-1] and (len(words) == 1 or o.size == words[0])]
            assert len(fits) == 1 and fits[0].shape == qa.answer


def test_yes_no_answers_are_exactly_balanced_per_kind(scenes):
    counts = collections.Counter((qa.kind, qa.answer) for qa in scenes.questions() if qa.answer in ("yes", "no"))
    kinds = {kind for kind, _ in counts}
    assert kinds == {"color_yesno", "relation_yesno", "exists"}
    for kind in kinds:
        assert counts[kind, "yes"] == counts[kind, "no"] > 50


def test_question_text_alone_does_not_predict_yes_no():
    """Majority answer per exact question text, fitted on train scenes, scores near chance on test scenes."""
    train = [qa for qa in make_scenes(600, seed=0).questions() if qa.answer in ("yes", "no")]
    test = [qa for qa in make_scenes(300, split="test", seed=0).questions() if qa.answer in ("yes", "no")]
    answers = collections.defaultdict(collections.Counter)
    for qa in train:
        answers[qa.question][qa.answer] += 1
    for kind in ("color_yesno", "relation_yesno", "exists"):
        subset = [qa for qa in test if qa.kind == kind]
        guess = [answers[qa.question].most_common(1)[0][0] if answers[qa.question] else "yes" for qa in subset]
        accuracy = np.mean([g == qa.answer for g, qa in zip(guess, subset)])
        assert accuracy < 0.62, (kind, accuracy)


def _mentions_pair(text: str, color: str, shape: str) -> bool:
    return re.search(rf"\b{color} {shape}", text) is not None


def test_compositional_split_holds_out_its_pairs():
    train, test = make_scenes(300, seed=0), make_scenes(100, split="test", seed=0)
    held = make_scenes(100, split="compositional", seed=0)
    assert len(HELD_OUT_PAIRS) == 5
    assert {s for _, s in HELD_OUT_PAIRS} == set(SHAPES)  # every shape loses exactly one colour ...
    seen = {(o.color, o.shape) for data in (train, test) for s in data.scenes for o in s.objects}
    assert not seen & HELD_OUT_PAIRS
    assert {c for c, _ in seen} == set(COLORS) and {s for _, s in seen} == set(SHAPES)  # ... yet all are seen
    assert all(any((o.color, o.shape) in HELD_OUT_PAIRS for o in s.objects) for s in held.scenes)
    texts = [qa.question for qa in train.questions()] + train.captions("short") + train.captions("detailed") + \
        [ins.response for ins in train.instructions()]
    for color, shape in HELD_OUT_PAIRS:
        assert not any(_mentions_pair(text, color, shape) for text in texts)
    for qa in train.questions():  # "Is the circle orange?" would also name a held-out pair
        if qa.kind == "color_yesno":
            words = qa.question.rstrip("?").split()
            assert (words[-1], words[-2]) not in HELD_OUT_PAIRS
    assert any(_mentions_pair(qa.question, c, s) for qa in held.questions() for c, s in HELD_OUT_PAIRS)


def test_captions_and_instructions_come_from_the_annotation(scenes):
    scene = scenes.scenes[0]
    short = scenes.captions("short")[0]
    for o in scene.objects:
        assert o.name in short
    lists = [ins for ins in scenes.instructions() if ins.kind == "list"]
    assert len(lists) == len(scenes)
    for ins in lists[:50]:
        ordered = sorted(scenes.scenes[ins.item].objects, key=lambda o: o.x)
        assert ins.response == ", ".join(o.name for o in ordered)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="split"):
        make_scenes(2, split="validation")
    with pytest.raises(ValueError, match="min_objects"):
        make_scenes(2, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="captions|kind"):
        make_scenes(2).captions("long")


def test_tensors_are_images_in_unit_range(scenes):
    x = scenes.tensors()
    assert x.shape == (300, 3, 64, 64) and 0 <= x.min() and x.max() <= 1
    assert np.allclose(x[0].permute(1, 2, 0).numpy() * 255, scenes.images[0])


# ---- clips --------------------------------------------------------------------------------------------------


def test_clips_are_deterministic():
    speech = world.espeak_available()
    a, b, c = make_clips(6, seed=1, speech=speech), make_clips(6, seed=1, speech=speech), make_clips(6, seed=2,
                                                                                                   speech=speech)
    assert a.frames.tobytes() == b.frames.tobytes() and a.audio.tobytes() == b.audio.tobytes()
    assert a.questions() == b.questions() and a.captions("detailed") == b.captions("detailed")
    assert a.frames.tobytes() != c.frames.tobytes() and a.audio.tobytes() != c.audio.tobytes()


def test_frames_change_exactly_at_the_annotated_events_in_order(clips):
    for clip in clips.clips:
        frames = [e.frame for e in clip.events]
        assert frames == sorted(frames) and len(set(frames)) == len(frames) and frames[0] >= 2
        for t in range(1, len(clip.frames)):
            assert (t in frames) == (not np.array_equal(clip.frames[t], clip.frames[t - 1]))


def test_each_event_is_visible_between_its_frame_and_the_one_before(clips):
    for clip in clips.clips:
        background = clip.background
        for e in clip.events:
            before = {o.shape: o for o in clip.states[e.frame - 1]}
            after = {o.shape: o for o in clip.states[e.frame]}
            old, new = clip.frames[e.frame - 1], clip.frames[e.frame]
            if e.kind == "appear":
                o = after[e.shape]
                assert e.shape not in before
                assert tuple(old[o.y, o.x]) == background and tuple(new[o.y, o.x]) == COLORS[e.after]
            elif e.kind == "disappear":
                o = before[e.shape]
                assert e.shape not in after
                assert tuple(old[o.y, o.x]) == COLORS[e.before] and tuple(new[o.y, o.x]) == background
            elif e.kind == "recolor":
                o = after[e.shape]
                assert tuple(old[o.y, o.x]) == COLORS[e.before] and tuple(new[o.y, o.x]) == COLORS[e.after]
            else:
                a, b = before[e.shape], after[e.shape]
                assert tuple(new[b.y, b.x]) == COLORS[e.before] and tuple(old[b.y, b.x]) == background
                step = {"left": (b.x < a.x, b.y == a.y), "right": (b.x > a.x, b.y == a.y),
                        "up": (b.y < a.y, b.x == a.x), "down": (b.y > a.y, b.x == a.x)}[e.direction]
                assert all(step)


def test_reversing_the_frames_reverses_the_order_answers(clips):
    """The "order" answers must depend on frame order: read backwards, the first object to change is the last."""
    for clip in clips.clips:
        changes = [t for t in range(1, len(clip.frames)) if not np.array_equal(clip.frames[t], clip.frames[t - 1])]
        reversed_frames = clip.frames[::-1]
        changes_reversed = [t for t in range(1, len(reversed_frames))
                            if not np.array_equal(reversed_frames[t], reversed_frames[t - 1])]
        assert [len(clip.frames) - t for t in changes_reversed][::-1] == changes
        answers = {qa.kind: qa.answer for qa in clip_questions(clip)}
        assert answers["first"] == clip.events[0].shape and answers["last"] == clip.events[-1].shape


def clip_questions(clip):
    return world.clip_questions(clip, np.random.default_rng(0), speech=bool(clip.word_span[1]))


def _spectrum_peak(signal: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(signal * np.hanning(len(signal)), n=16 * len(signal)))
    return float(np.fft.rfftfreq(16 * len(signal), 1 / SAMPLE_RATE)[spectrum.argmax()])


def test_sounds_start_at_the_event_times_with_their_pitch(clips):
    for audio, clip in zip(clips.audio, clips.clips):
        assert len(audio) == len(clip.frames) * clip.frame_seconds * SAMPLE_RATE
        for e in clip.events:
            start = int(round(e.time * SAMPLE_RATE))
            assert e.time == e.frame * clip.frame_seconds
            window = audio[start:start + int(0.3 * SAMPLE_RATE)]
            assert np.sqrt(np.mean(window ** 2)) > 0.05  # loud during the event's sound ...
            assert np.abs(audio[start - int(0.1 * SAMPLE_RATE):start]).max() < 1e-6  # ... silent just before
            first, last = _spectrum_peak(window[:1600]), _spectrum_peak(window[-1600:])  # first / last 0.1 s
            if e.kind == "appear":
                assert 400 <= first < 700 and 900 < last <= 1210  # rising chirp
            elif e.kind == "disappear":
                assert 900 < first <= 1210 and 400 <= last < 700  # falling chirp
            elif e.kind == "recolor":
                assert abs(_spectrum_peak(window) - world.COLOR_PITCH[e.after]) < 3  # the new colour's pitch
            else:  # double beep: sound, silence, sound
                thirds = [np.sqrt(np.mean(window[i * 1600 + 200:(i + 1) * 1600 - 200] ** 2)) for i in range(3)]
                assert thirds[0] > 0.1 and thirds[1] < 1e-6 and thirds[2] > 0.1
                assert abs(_spectrum_peak(window[:1600]) - world.BEEP_HZ) < 5


@needs_espeak
def test_the_voice_is_where_annotated_and_nothing_else_sounds(clips):
    for audio, clip in zip(clips.audio, clips.clips):
        start, end = (int(round(t * SAMPLE_RATE)) for t in clip.word_span)
        spoken = world.spoken_word(clip.word, clip.voice)
        assert end - start == len(spoken) and np.allclose(audio[start:end], spoken)
        assert end / SAMPLE_RATE < clip.events[0].time  # the voice speaks before the first event
        quiet = np.ones(len(audio), bool)
        quiet[start:end] = False
        for e in clip.events:
            onset = int(round(e.time * SAMPLE_RATE))
            quiet[onset:onset + int(0.3 * SAMPLE_RATE)] = False
        assert np.abs(audio[quiet]).max() == 0


def test_clip_yes_no_answers_are_exactly_balanced(clips):
    counts = collections.Counter((qa.kind, qa.answer) for qa in clips.questions() if qa.answer in ("yes", "no"))
    for kind in {kind for kind, _ in counts}:
        assert counts[kind, "yes"] == counts[kind, "no"] > 0


@needs_espeak
def test_sound_questions_follow_the_word_and_the_last_frame(clips):
    needs = collections.Counter(qa.needs for qa in clips.questions())
    assert needs["sound"] == needs["sound+frames"] == len(clips) and needs["order"] > len(clips)
    for qa in clips.questions():
        clip = clips.clips[qa.item]
        if qa.kind == "word":
            assert qa.answer == clip.word
        if qa.kind == "word_seen":
            visible = {tuple(clip.frames[-1][o.y, o.x]) for o in clip.states[-1]}
            assert qa.answer == ("yes" if COLORS[clip.word] in visible else "no")


def test_missing_espeak_is_named_with_its_fix(monkeypatch):
    monkeypatch.setattr(world.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y espeak-ng"):
        make_clips(2, speech=True)
    silent = make_clips(2, speech=False)
    assert silent.clips[0].word_span == (0.0, 0.0) and all(qa.needs != "sound" for qa in silent.questions())


def test_resample_keeps_a_tone():
    t = np.arange(22050) / 22050
    y = world.resample(np.sin(2 * np.pi * 440 * t), 22050, SAMPLE_RATE)
    assert len(y) == SAMPLE_RATE
    assert np.allclose(y, np.sin(2 * np.pi * 440 * np.arange(SAMPLE_RATE) / SAMPLE_RATE), atol=1e-6)
