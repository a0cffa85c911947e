package catalogsync

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// HTTP reads the health endpoint straight from Consul's HTTP API. With
// thousands of instances the response is megabytes of JSON per change;
// decoding it into the API client's types costs more than everything else
// meshd does with a change. HTTP asks for it uncompressed (the agent is
// local) and decodes only the fields meshd uses, reusing the entry of every
// instance whose ModifyIndex did not change.
type HTTP struct {
	client *http.Client
	base   url.URL
	token  string
	buf    bytes.Buffer
	// prev is the last response decoded, elems its elements.
	prev  []byte
	elems []element
}

// NewHTTP reads through the client, address and token of cfg, as
// api.NewClient left it (it reads the token file and sets up TLS and
// unix sockets).
func NewHTTP(cfg *api.Config) *HTTP {
	return &HTTP{client: cfg.HttpClient, base: url.URL{Scheme: cfg.Scheme, Host: cfg.Address}, token: cfg.Token}
}

// maxResponse bounds a health response: far above 100,000 instances.
const maxResponse = 1 << 30

// Service reads the instances of service as q asks, returning them sorted
// by service ID with the response's index.
func (h *HTTP) Service(ctx context.Context, service string, q *api.QueryOptions) ([]peers.Entry, uint64, error) {
	u := h.base
	u.Path = "/v1/health/service/" + url.PathEscape(service)
	v := url.Values{}
	if q.AllowStale {
		v.Set("stale", "")
	}
	if q.WaitIndex > 0 {
		v.Set("index", strconv.FormatUint(q.WaitIndex, 10))
	}
	if q.WaitTime > 0 {
		v.Set("wait", strconv.FormatInt(q.WaitTime.Milliseconds(), 10)+"ms")
	}
	if q.Datacenter != "" {
		v.Set("dc", q.Datacenter)
	}
	u.RawQuery = v.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, 0, err
	}
	// Set explicitly, so the transport neither asks for gzip nor inflates.
	req.Header.Set("Accept-Encoding", "identity")
	if h.token != "" {
		req.Header.Set("X-Consul-Token", h.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, 0, err
	}
	defer resp.Body.Close()
	// One buffer serves every read: decode copies out what it keeps.
	h.buf.Reset()
	_, err = h.buf.ReadFrom(io.LimitReader(resp.Body, maxResponse))
	body := h.buf.Bytes()
	if err != nil {
		return nil, 0, fmt.Errorf("read %s: %w", u.Path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, 0, api.StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(body))}
	}
	index, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: bad X-Consul-Index %q", u.Path, resp.Header.Get("X-Consul-Index"))
	}
	entries, err := h.decode(body)
	if err != nil {
		return nil, 0, fmt.Errorf("%s: %w", u.Path, err)
	}
	return entries, index, nil
}

// element is one element of a response's top-level array: its bytes
// [start, end) and the entry it made (ok is false for an element without a
// service, such as null).
type element struct {
	start, end int
	entry      peers.Entry
	ok         bool
	// meta and tags are where the raw Meta and Tags values are in the
	// response ([start, end)).
	meta, tags [2]int
}

func (e *element) shift(by int) {
	e.start += by
	e.end += by
	e.meta[0] += by
	e.meta[1] += by
	e.tags[0] += by
	e.tags[1] += by
}

// decode parses a health response. Between two reads most of the response
// is the same bytes: Consul writes the instances in the same order, and an
// unchanged instance the same way. decode therefore compares the response
// with the last one, takes every leading element that lies in their common
// prefix, and every trailing one that lies in their common suffix (from an
// element boundary on), from the last read, and scans only the elements in
// between (see scanner): a change costs a comparison of the bytes, not a
// parse of every instance. Meta and tags of an instance scanned again are
// taken from the last read when their bytes did not change.
func (h *HTTP) decode(body []byte) ([]peers.Entry, error) {
	elems, err := h.elements(body)
	if err != nil {
		h.prev, h.elems = h.prev[:0], nil
		return nil, err
	}
	h.prev, h.elems = append(h.prev[:0], body...), elems
	out := make([]peers.Entry, 0, len(elems))
	for _, e := range elems {
		if e.ok {
			out = append(out, e.entry)
		}
	}
	slices.SortFunc(out, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return out, nil
}

// elements scans body's top-level array, reusing what the last read (h.prev,
// h.elems) has in common with it.
func (h *HTTP) elements(body []byte) ([]element, error) {
	old, oldElems := h.prev, h.elems
	prefix := commonPrefix(old, body)
	suffix := commonSuffix(old[prefix:], body[prefix:])
	shift := len(body) - len(old)

	s := &scanner{b: body}
	if err := s.expect('['); err != nil {
		return nil, err
	}
	// The leading elements inside the common prefix are what they were.
	k := 0
	for k < len(oldElems) && oldElems[k].end <= prefix {
		k++
	}
	elems := make([]element, 0, len(oldElems)+1)
	elems = append(elems, oldElems[:k]...)
	first := k == 0
	if !first {
		s.i = oldElems[k-1].end
	} else if s.peek() == ']' {
		s.i++
		return elems, s.end()
	}
	var byID map[string]*element
	scanned := 0
	for {
		if !first {
			switch s.peek() {
			case ',':
				s.i++
			case ']':
				s.i++
				return elems, s.end()
			default:
				return nil, fmt.Errorf("%w at byte %d: want ',' or ']'", errSyntax, s.i)
			}
		}
		first = false
		s.ws()
		at := s.i
		// From an element boundary inside the common suffix on, the rest
		// of the response is the rest of the last one, which parsed to the
		// end.
		if at >= len(body)-suffix {
			if j, ok := slices.BinarySearchFunc(oldElems, at-shift, func(e element, start int) int { return cmp.Compare(e.start, start) }); ok {
				for _, e := range oldElems[j:] {
					e.shift(shift)
					elems = append(elems, e)
				}
				return elems, nil
			}
		}
		// Many elements to scan (several changes far apart, or a first
		// read): index the last read's entries to reuse their Meta.
		if scanned++; scanned == 16 && len(oldElems) > 0 {
			byID = make(map[string]*element, len(oldElems))
			for i := range oldElems {
				if oldElems[i].ok {
					byID[oldElems[i].entry.ServiceID] = &oldElems[i]
				}
			}
		}
		e, err := scanElement(s, old, byID)
		if err != nil {
			return nil, err
		}
		e.start, e.end = at, s.i
		elems = append(elems, e)
	}
}

// end checks that nothing but white space follows the response.
func (s *scanner) end() error {
	if s.peek() != 0 {
		return fmt.Errorf("%w: data after the response", errSyntax)
	}
	return nil
}

func commonPrefix(a, b []byte) int {
	n := min(len(a), len(b))
	// Compare in blocks: bytes.Equal is a vectorized memcmp.
	i := 0
	for block := 4096; i+block <= n && bytes.Equal(a[i:i+block], b[i:i+block]); i += block {
	}
	for i < n && a[i] == b[i] {
		i++
	}
	return i
}

func commonSuffix(a, b []byte) int {
	n := min(len(a), len(b))
	i := 0
	for block := 4096; i+block <= n && bytes.Equal(a[len(a)-i-block:len(a)-i], b[len(b)-i-block:len(b)-i]); i += block {
	}
	for i < n && a[len(a)-1-i] == b[len(b)-1-i] {
		i++
	}
	return i
}

// scanElement reads one element of the response: an instance, with its
// Meta and tags taken from the last read's element of the same service ID
// (in the response lastBody) when their bytes are the same.
func scanElement(s *scanner, lastBody []byte, last map[string]*element) (el element, err error) {
	if s.isNull() {
		return el, nil
	}
	var (
		e          peers.Entry
		ok         bool
		meta, tags [2]int
		checks     api.HealthChecks
	)
	span := func(at *[2]int) error {
		b, err := s.span()
		at[0], at[1] = s.i-len(b), s.i
		return err
	}
	err = s.each('{', func(key []byte) error {
		switch string(key) {
		case "Service":
			if s.isNull() {
				return nil
			}
			ok = true
			return s.each('{', func(key []byte) error {
				var err error
				switch string(key) {
				case "ID":
					e.ServiceID, err = s.text()
				case "CreateIndex":
					e.CreateIndex, err = s.uint()
				case "ModifyIndex":
					e.ModifyIndex, err = s.uint()
				case "Meta":
					err = span(&meta)
				case "Tags":
					err = span(&tags)
				default:
					err = s.skip()
				}
				return err
			})
		case "Checks":
			if s.isNull() {
				return nil
			}
			return s.each('[', func([]byte) error {
				c := &api.HealthCheck{}
				checks = append(checks, c)
				return s.each('{', func(key []byte) error {
					var err error
					switch string(key) {
					case "CheckID":
						c.CheckID, err = s.text()
					case "Status":
						c.Status, err = s.text()
					default:
						err = s.skip()
					}
					return err
				})
			})
		default:
			return s.skip()
		}
	})
	if err != nil || !ok {
		return element{}, err
	}
	raw := func(b []byte, at [2]int) []byte { return b[at[0]:at[1]] }
	if l := last[e.ServiceID]; l != nil && bytes.Equal(raw(lastBody, l.meta), raw(s.b, meta)) && bytes.Equal(raw(lastBody, l.tags), raw(s.b, tags)) {
		e.Meta, e.Tags = l.entry.Meta, l.entry.Tags
	} else if err := parseMetaTags(&e, raw(s.b, meta), raw(s.b, tags)); err != nil {
		return element{}, err
	}
	e.Health = checks.AggregatedStatus()
	return element{entry: e, ok: true, meta: meta, tags: tags}, nil
}

// parseMetaTags reads an instance's Meta object and Tags array.
func parseMetaTags(e *peers.Entry, meta, tags []byte) error {
	if m := (&scanner{b: meta}); len(meta) > 0 && !m.isNull() {
		e.Meta = map[string]string{}
		err := m.each('{', func(key []byte) error {
			k, err := (&scanner{b: append(append([]byte{'"'}, key...), '"')}).text()
			if err != nil {
				return err
			}
			v, err := m.text()
			e.Meta[k] = v
			return err
		})
		if err != nil {
			return err
		}
	}
	if t := (&scanner{b: tags}); len(tags) > 0 && !t.isNull() {
		err := t.each('[', func([]byte) error {
			v, err := t.text()
			e.Tags = append(e.Tags, v)
			return err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// sameEntries reports whether two reads say the same to meshd: equal
// service IDs, health, and content (Meta, tags, CreateIndex). An entry
// whose ModifyIndex did not change has the same content, so only changed
// entries are compared field by field.
func sameEntries(a, b []peers.Entry) bool {
	return slices.EqualFunc(a, b, func(x, y peers.Entry) bool {
		if x.ServiceID != y.ServiceID || x.Health != y.Health {
			return false
		}
		return x.ModifyIndex != 0 && x.ModifyIndex == y.ModifyIndex || sameContent(x, y)
	})
}

func sameContent(x, y peers.Entry) bool {
	return x.CreateIndex == y.CreateIndex && slices.Equal(x.Tags, y.Tags) && maps.Equal(x.Meta, y.Meta)
}
