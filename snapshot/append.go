package snapshot

import (
	"encoding/json"
	"slices"
	"strconv"

	"meshd.dev/meshd/peers"
)

// appendEntry appends e's JSON as the file holds it: exactly what
// json.Marshal(toFile(e)) writes (TestAppendEntryIsMarshal,
// FuzzAppendEntry), several times faster, so that a save of thousands of
// entries needs no cache of their JSON (at 10,000 entries that cache was
// 8 MB held for good).
func appendEntry(b []byte, e peers.Entry) []byte {
	b = append(b, `{"service_id":`...)
	b = appendString(b, e.ServiceID)
	b = append(b, `,"meta":`...)
	if e.Meta == nil {
		b = append(b, "null"...)
	} else {
		// Keys sorted, as encoding/json writes a map; a signed entry has
		// about ten.
		var arr [16]string
		keys := arr[:0]
		for k := range e.Meta {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, k)
			b = append(b, ':')
			b = appendString(b, e.Meta[k])
		}
		b = append(b, '}')
	}
	if len(e.Tags) > 0 {
		b = append(b, `,"tags":[`...)
		for i, t := range e.Tags {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendString(b, t)
		}
		b = append(b, ']')
	}
	b = append(b, `,"create_index":`...)
	b = strconv.AppendUint(b, e.CreateIndex, 10)
	if e.ModifyIndex != 0 {
		b = append(b, `,"modify_index":`...)
		b = strconv.AppendUint(b, e.ModifyIndex, 10)
	}
	if e.Health != "" {
		b = append(b, `,"health":`...)
		b = appendString(b, e.Health)
	}
	return append(b, '}')
}

// appendString appends s as a JSON string the way json.Marshal writes it.
// Printable ASCII other than the characters it escapes (quote, backslash,
// and <, >, & for HTML) is copied; any other string, rare in an entry, is
// left to json.Marshal itself.
func appendString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c < 0x20 || c >= 0x7f, c == '"', c == '\\', c == '<', c == '>', c == '&':
			q, err := json.Marshal(s)
			if err != nil { // not for a string: json.Marshal writes every string
				panic(err)
			}
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
