package catalogsync

import (
	"bytes"
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
	cache  map[string]peers.Entry // by service ID, from the last read
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

// decode parses a health response: one pass over its bytes (see scanner),
// taking an instance's Meta and tags from the last read when its
// ModifyIndex is unchanged.
func (h *HTTP) decode(body []byte) ([]peers.Entry, error) {
	s := &scanner{b: body}
	next := make(map[string]peers.Entry, len(h.cache))
	out := make([]peers.Entry, 0, len(h.cache))
	err := s.each('[', func([]byte) error {
		if s.isNull() {
			return nil
		}
		var (
			e          peers.Entry
			meta, tags []byte
			hasService bool
			checks     api.HealthChecks
		)
		err := s.each('{', func(key []byte) error {
			switch string(key) {
			case "Service":
				if s.isNull() {
					return nil
				}
				hasService = true
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
						meta, err = s.span()
					case "Tags":
						tags, err = s.span()
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
		if err != nil || !hasService {
			return err
		}
		if c, ok := h.cache[e.ServiceID]; ok && e.ModifyIndex != 0 && c.ModifyIndex == e.ModifyIndex && c.CreateIndex == e.CreateIndex {
			e.Meta, e.Tags = c.Meta, c.Tags
		} else if err := parseMetaTags(&e, meta, tags); err != nil {
			return err
		}
		e.Health = checks.AggregatedStatus()
		next[e.ServiceID] = e
		out = append(out, e)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if s.peek() != 0 {
		return nil, fmt.Errorf("%w: data after the response", errSyntax)
	}
	h.cache = next
	slices.SortFunc(out, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return out, nil
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
