package catalogsync

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"hash/maphash"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	"meshd.dev/meshd/peers"
)

// HTTP reads the health endpoint straight from Consul's HTTP API. With
// thousands of instances the response is megabytes of JSON per change;
// decoding it into the API client's types costs more than everything else
// meshd does with a change. HTTP asks for it uncompressed (the agent is
// local) and decodes only the fields meshd uses, as it arrives, a window
// at a time (the response is never held whole), reusing the entry of every
// instance whose bytes did not change.
type HTTP struct {
	client *http.Client
	base   url.URL
	token  string
	// buf is the read window, kept between reads; win is its size (zero:
	// window; tests make it tiny, to cut values everywhere).
	buf []byte
	win int
	// elems are the elements of the last response decoded; seed hashes
	// them.
	elems  []element
	seed   maphash.Seed
	seeded bool
}

// NewHTTP reads through the client, address and token of cfg, as
// api.NewClient left it (it reads the token file and sets up TLS and
// unix sockets).
func NewHTTP(cfg *api.Config) *HTTP {
	return &HTTP{client: cfg.HttpClient, base: url.URL{Scheme: cfg.Scheme, Host: cfg.Address}, token: cfg.Token}
}

// maxResponse bounds a health response: far above 100,000 instances.
const maxResponse = 1 << 30

// window is the size of the read window: many instances (about 1.5 KB
// each when signed). It grows only for an instance larger than half of it.
const window = 64 << 10

// maxErrorBody bounds what is kept of an error response's body.
const maxErrorBody = 4 << 10

// Service reads the instances of service as q asks, returning them sorted
// by service ID with the response's index.
func (h *HTTP) Service(ctx context.Context, service string, q *api.QueryOptions) ([]peers.Entry, *api.QueryMeta, error) {
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
		return nil, nil, err
	}
	// Set explicitly, so the transport neither asks for gzip nor inflates.
	req.Header.Set("Accept-Encoding", "identity")
	if h.token != "" {
		req.Header.Set("X-Consul-Token", h.token)
	}
	resp, err := h.client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, err := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody))
		if err != nil {
			return nil, nil, fmt.Errorf("read %s: %w", u.Path, err)
		}
		return nil, nil, api.StatusError{Code: resp.StatusCode, Body: strings.TrimSpace(string(body))}
	}
	index, err := strconv.ParseUint(resp.Header.Get("X-Consul-Index"), 10, 64)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: bad X-Consul-Index %q", u.Path, resp.Header.Get("X-Consul-Index"))
	}
	meta := &api.QueryMeta{LastIndex: index}
	// Consul sets these on every read: how long ago the answering server
	// heard from the leader (zero on the leader), and whether it knows one.
	if ms, err := strconv.ParseUint(resp.Header.Get("X-Consul-LastContact"), 10, 64); err == nil {
		meta.LastContact = time.Duration(ms) * time.Millisecond
	}
	meta.KnownLeader = resp.Header.Get("X-Consul-KnownLeader") == "true"
	entries, err := h.decodeFrom(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", u.Path, err)
	}
	return entries, meta, nil
}

// stream is a window on a response being read: buf[i:] is what is read
// and not yet taken, base the response offset of buf[0].
type stream struct {
	r    io.Reader
	buf  []byte
	i    int
	base int64
	err  error   // the read that ended the response (io.EOF: its end)
	sc   scanner // scan's, kept here so that a scan does not allocate one
}

// fill reads more of the response, keeping buf[keep:] (moved to the
// front: i and keep's data shift with it), and reports whether it read
// anything. It reads until the window is full, so that an instance
// scanned again after a fill is scanned at most a few times; the window
// doubles when what is kept fills half of it.
func (st *stream) fill(keep int) bool {
	if st.err != nil {
		return false
	}
	n := copy(st.buf[:cap(st.buf)], st.buf[keep:])
	st.base += int64(keep)
	st.i -= keep
	st.buf = st.buf[:n]
	if n > cap(st.buf)/2 {
		st.buf = slices.Grow(st.buf, max(cap(st.buf), 16))
	}
	read := false
	for len(st.buf) < cap(st.buf) {
		k, err := st.r.Read(st.buf[len(st.buf):cap(st.buf)])
		st.buf = st.buf[:len(st.buf)+k]
		read = read || k > 0
		if err != nil {
			st.err = err
			break
		}
	}
	return read
}

// need makes the window hold n bytes from i, reading more if needed; false
// if the response ends first.
func (st *stream) need(n int) bool {
	for len(st.buf)-st.i < n {
		if !st.fill(st.i) {
			return false
		}
	}
	return true
}

// readErr is the error that ended the response, if it did not just end.
func (st *stream) readErr() error {
	if st.err == io.EOF {
		return nil
	}
	return st.err
}

// scan runs f on a scanner over the window from i, reading more and
// running f again when it ran into the window's end (a value cut by it),
// and moves i past what f read. f must read one whole value; a value at
// the very end counts as whole only at the response's end (a number may
// go on).
func (st *stream) scan(f func(s *scanner) error) error {
	for {
		s := &st.sc
		*s = scanner{b: st.buf, i: st.i, base: st.base}
		err := f(s)
		// An error this close to the end may be a value cut short (even
		// "nu" of null): read more first.
		cut := s.i > len(st.buf)-8
		if err == nil && s.i < len(st.buf) || !cut {
			if err == nil {
				st.i = s.i
			}
			return err
		}
		took := s.i - st.i // fill moves the window's data
		if !st.fill(st.i) {
			if err == nil {
				st.i += took
			} else if rerr := st.readErr(); rerr != nil {
				return rerr
			}
			return err
		}
	}
}

// element is one element of a response's top-level array: its length and
// a hash of its bytes, and the entry it made (ok is false for an element
// without a service, such as null).
type element struct {
	size  int
	hash  uint64
	entry peers.Entry
	ok    bool
	// meta and tags hash the raw Meta and Tags values.
	meta, tags uint64
}

// decode parses a whole health response (see decodeFrom).
func (h *HTTP) decode(body []byte) ([]peers.Entry, error) {
	return h.decodeFrom(bytes.NewReader(body))
}

// decodeFrom parses a health response as it is read. Between two reads
// most of the response is the same bytes: Consul writes the instances in
// the same order, and an unchanged instance the same way. decodeFrom
// therefore walks the response element by element and takes the entry of
// every element whose bytes hash as those of the next elements of the
// last read did (within a few, so that added and removed instances
// resync), scanning only the others (see scanner): a change costs a hash
// of the response, not a parse of every instance, and neither the last
// response nor this one is kept. Meta and tags of an instance scanned
// again are taken from the last read when their bytes did not change.
func (h *HTTP) decodeFrom(r io.Reader) ([]peers.Entry, error) {
	win := cmp.Or(h.win, window)
	if cap(h.buf) < win || cap(h.buf) > 4*win {
		h.buf = make([]byte, 0, win)
	}
	st := &stream{r: r, buf: h.buf[:0]}
	elems, err := h.elements(st)
	h.buf = st.buf[:0]
	if err != nil {
		h.elems = nil
		return nil, err
	}
	h.elems = elems
	out := make([]peers.Entry, 0, len(elems))
	for _, e := range elems {
		if e.ok {
			out = append(out, e.entry)
		}
	}
	slices.SortFunc(out, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return out, nil
}

// resyncWindow is how many elements of the last read past the expected one
// an element is matched against: that many instances may leave between
// two reads without losing the reuse of the rest.
const resyncWindow = 8

// elements scans the response's top-level array, reusing the elements of
// the last read (h.elems) it still has.
func (h *HTTP) elements(st *stream) ([]element, error) {
	if !h.seeded {
		h.seed, h.seeded = maphash.MakeSeed(), true
	}
	last := h.elems
	hash := func(b []byte) uint64 { return maphash.Bytes(h.seed, b) }
	var sep byte // what follows an element: ',' or ']'
	punct := func(want byte) func(s *scanner) error {
		return func(s *scanner) error {
			switch c := s.peek(); {
			case c == want || want == ',' && c == ']':
				s.i++
				sep = c
				return nil
			case want == ',':
				return fmt.Errorf("%w at byte %d: want ',' or ']'", errSyntax, s.at(s.i))
			default:
				return s.expect(want)
			}
		}
	}
	if err := st.scan(punct('[')); err != nil {
		return nil, err
	}
	elems := make([]element, 0, len(last)+1)
	var empty bool
	if err := st.scan(func(s *scanner) error { empty = s.peek() == ']'; return nil }); err != nil {
		return nil, err
	}
	if empty {
		st.i++
		return elems, st.end()
	}
	var byID map[string]*element
	next, scanned := 0, 0 // next: the element of the last read expected here
	for {
		if err := st.scan(func(s *scanner) error { s.ws(); return nil }); err != nil {
			return nil, err
		}
		reused := false
		for k := next; k < len(last) && k < next+resyncWindow; k++ {
			if e := last[k]; st.need(e.size) && hash(st.buf[st.i:st.i+e.size]) == e.hash {
				elems, st.i, next, reused = append(elems, e), st.i+e.size, k+1, true
				break
			}
		}
		if !reused {
			// Many elements to scan (several changes, or a first read):
			// index the last read's entries to reuse their Meta.
			if scanned++; scanned == 16 && len(last) > 0 {
				byID = make(map[string]*element, len(last))
				for i := range last {
					if last[i].ok {
						byID[last[i].entry.ServiceID] = &last[i]
					}
				}
			}
			var e element
			err := st.scan(func(s *scanner) error {
				at := s.i
				var err error
				if e, err = scanElement(s, hash, byID); err == nil {
					e.size, e.hash = s.i-at, hash(s.b[at:s.i])
				}
				return err
			})
			if err != nil {
				return nil, err
			}
			elems = append(elems, e)
		}
		if err := st.scan(punct(',')); err != nil {
			return nil, err
		}
		if sep == ']' {
			return elems, st.end()
		}
	}
}

// end checks that nothing but white space follows the response.
func (st *stream) end() error {
	for {
		s := &scanner{b: st.buf, i: st.i, base: st.base}
		if s.ws(); s.i < len(s.b) {
			return fmt.Errorf("%w at byte %d: data after the response", errSyntax, s.at(s.i))
		}
		st.i = len(st.buf)
		if !st.fill(st.i) {
			return st.readErr()
		}
	}
}

// scanElement reads one element of the response: an instance, with its
// Meta and tags taken from the last read's element of the same service ID
// when their bytes hash the same.
func scanElement(s *scanner, hash func([]byte) uint64, last map[string]*element) (el element, err error) {
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
	rawMeta, rawTags := s.b[meta[0]:meta[1]], s.b[tags[0]:tags[1]]
	metaHash, tagsHash := hash(rawMeta), hash(rawTags)
	if l := last[e.ServiceID]; l != nil && l.meta == metaHash && l.tags == tagsHash {
		e.Meta, e.Tags = l.entry.Meta, l.entry.Tags
	} else if err := parseMetaTags(&e, rawMeta, rawTags); err != nil {
		return element{}, err
	}
	e.Health = checks.AggregatedStatus()
	return element{entry: e, ok: true, meta: metaHash, tags: tagsHash}, nil
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
