package snapshot

import (
	"bytes"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"meshd.dev/meshd/catalogsync"
	"meshd.dev/meshd/peers"
)

var sample = catalogsync.Snapshot{Index: 42, Revocations: [][]byte{[]byte("revocation [1]"), {0, 1, 2}}, Entries: []peers.Entry{
	{ServiceID: "meshd-h2", CreateIndex: 7, Health: "passing", Tags: []string{"gateway"}, Meta: map[string]string{
		"v": "1", "node": "h2", "public_key": "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=",
		"endpoint": "198.18.0.2:51820", "prefix": "fdaa:0:2::/48",
	}},
	{ServiceID: "meshd-h3", CreateIndex: 9, Meta: map[string]string{"v": "1", "node": "h3"}},
}}

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	at := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	if err := Save(path, sample, at); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Errorf("mode %04o, want 0600", st.Mode().Perm())
	}
	got, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(Saved{Snapshot: sample, SavedAt: at}, got, cmpopts.EquateEmpty()); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
}

func TestCorrupt(t *testing.T) {
	good, err := Encode(sample, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string][]byte{
		"empty":            nil,
		"truncated":        good[:len(good)/2],
		"not json":         []byte("hello"),
		"wrong version":    []byte(`{"version":2,"entries":[]}`),
		"trailing garbage": append(append([]byte{}, good...), []byte(`{}`)...),
		"unknown field":    []byte(`{"version":1,"entries":[],"evil":true}`),
		"entry without id": []byte(`{"version":1,"entries":[{"meta":{}}]}`),
	}
	for name, b := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := Decode(b); err == nil {
				t.Errorf("Decode accepted a %s file", name)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing")); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load of a missing file: %v, want ErrNotExist", err)
	}
}

// FuzzDecode: no input panics, and whatever decodes survives a round trip.
func FuzzDecode(f *testing.F) {
	good, _ := Encode(sample, time.Unix(0, 0))
	f.Add(good)
	f.Add([]byte(`{"version":1,"entries":[]}`))
	f.Add([]byte(`{"version":1,"index":18446744073709551615,"entries":[{"service_id":"x","meta":null}]}`))
	f.Add([]byte(`[]`))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := Decode(b)
		if err != nil {
			return
		}
		again, err := Encode(s.Snapshot, s.SavedAt)
		if err != nil {
			t.Fatalf("decoded snapshot does not encode: %v", err)
		}
		s2, err := Decode(again)
		if err != nil {
			t.Fatalf("re-encoded snapshot does not decode: %v", err)
		}
		if diff := cmp.Diff(s, s2, cmpopts.EquateEmpty()); diff != "" {
			t.Errorf("round trip changed the snapshot (-first +second):\n%s", diff)
		}
	})
}

// TestEncodeIsTheFileMarshalled checks that the entry-by-entry writer makes
// exactly what marshalling the whole file would, with no entry, one, and
// several.
func TestEncodeIsTheFileMarshalled(t *testing.T) {
	at := time.Date(2026, 11, 22, 3, 0, 0, 0, time.UTC)
	for _, s := range []catalogsync.Snapshot{{Index: 1}, {Index: 2, Entries: sample.Entries[:1]}, sample} {
		var got bytes.Buffer
		if err := encode(&got, s, at); err != nil {
			t.Fatal(err)
		}
		f := file{Version: Version, SavedAt: at, Index: s.Index, Revocations: s.Revocations, Entries: []entry{}}
		for _, e := range s.Entries {
			f.Entries = append(f.Entries, toFile(e))
		}
		want, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(want)+"\n", got.String()); diff != "" {
			t.Errorf("%d entries (-marshal +encode):\n%s", len(s.Entries), diff)
		}
	}
}

// TestSaveRefusesWhatLoadCannotRead: a snapshot of exactly the size limit
// saves and loads; one byte over is not saved (ErrTooLarge), and the file
// saved before stays, loadable.
func TestSaveRefusesWhatLoadCannotRead(t *testing.T) {
	b, err := Encode(sample, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	defer func(old int) { maxSize = old }(maxSize)
	maxSize = len(b)
	path := filepath.Join(t.TempDir(), FileName)
	if err := Save(path, sample, time.Unix(0, 0)); err != nil {
		t.Fatalf("at the limit: %v", err)
	}
	if _, err := Load(path); err != nil {
		t.Fatalf("load at the limit: %v", err)
	}
	bigger := catalogsync.Snapshot{Index: 43, Entries: append(sample.Entries[:2:2], peers.Entry{ServiceID: "meshd-h4"})}
	if err := Save(path, bigger, time.Unix(1, 0)); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Save over the limit = %v, want ErrTooLarge", err)
	}
	got, err := Load(path)
	if err != nil || got.Index != 42 {
		t.Errorf("after a refused save: %+v, %v; want the earlier snapshot", got.Index, err)
	}
}

// TestAppendEntryIsMarshal: appendEntry writes exactly json.Marshal's
// bytes for entries with every optional field set or not, and strings that
// need escaping (HTML characters, quotes, control characters, invalid
// UTF-8, U+2028).
func TestAppendEntryIsMarshal(t *testing.T) {
	entries := append(slices.Clone(sample.Entries),
		peers.Entry{},
		peers.Entry{ServiceID: "meshd-x", Meta: map[string]string{}, Tags: []string{}},
		peers.Entry{ServiceID: "a<b>&\"c\\", Meta: map[string]string{"k\n": "v\x00\xff\u2028é", "": ""}, Tags: []string{"t1", "<t2>"},
			CreateIndex: 1<<64 - 1, ModifyIndex: 7, Health: "critical"},
	)
	for _, e := range entries {
		want, err := json.Marshal(toFile(e))
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(string(want), string(appendEntry(nil, e))); diff != "" {
			t.Errorf("entry %q (-marshal +appendEntry):\n%s", e.ServiceID, diff)
		}
	}
}

// FuzzAppendEntry: for any strings and indexes, appendEntry writes exactly
// what json.Marshal writes.
func FuzzAppendEntry(f *testing.F) {
	f.Add("meshd-h1", "public_key", "k\u00e9y\"\\/<>&\u2028", "gateway", "passing", uint64(3), uint64(9))
	f.Add("", "", "", "", "", uint64(0), uint64(0))
	f.Fuzz(func(t *testing.T, id, key, val, tag, health string, create, modify uint64) {
		e := peers.Entry{ServiceID: id, Meta: map[string]string{key: val, "v": "1"}, CreateIndex: create, ModifyIndex: modify, Health: health}
		if tag != "" {
			e.Tags = []string{tag, tag + "x"}
		}
		want, err := json.Marshal(toFile(e))
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEntry([]byte("x"), e); string(got) != "x"+string(want) {
			t.Fatalf("appendEntry = %s, want %s", got[1:], want)
		}
	})
}
