package catalogsync

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/hashicorp/consul/api"
	"github.com/valyala/fastjson"

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
	parser fastjson.Parser
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
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
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

// decode parses a health response.
func (h *HTTP) decode(body []byte) ([]peers.Entry, error) {
	v, err := h.parser.ParseBytes(body)
	if err != nil {
		return nil, fmt.Errorf("response is not JSON: %w", err)
	}
	items, err := v.Array()
	if err != nil {
		return nil, errors.New("response is not a JSON array")
	}
	next := make(map[string]peers.Entry, len(items))
	out := make([]peers.Entry, 0, len(items))
	for _, item := range items {
		svc := item.Get("Service")
		if svc == nil || svc.Type() != fastjson.TypeObject {
			continue
		}
		id := string(svc.GetStringBytes("ID"))
		modify := svc.GetUint64("ModifyIndex")
		e, ok := h.cache[id]
		if !ok || modify == 0 || e.ModifyIndex != modify {
			e = peers.Entry{ServiceID: id, CreateIndex: svc.GetUint64("CreateIndex"), ModifyIndex: modify}
			if meta := svc.GetObject("Meta"); meta != nil {
				e.Meta = make(map[string]string, meta.Len())
				meta.Visit(func(k []byte, v *fastjson.Value) {
					if b, err := v.StringBytes(); err == nil {
						e.Meta[string(k)] = string(b)
					}
				})
			}
			for _, t := range svc.GetArray("Tags") {
				if b, err := t.StringBytes(); err == nil {
					e.Tags = append(e.Tags, string(b))
				}
			}
		}
		var checks api.HealthChecks
		for _, c := range item.GetArray("Checks") {
			checks = append(checks, &api.HealthCheck{CheckID: string(c.GetStringBytes("CheckID")), Status: string(c.GetStringBytes("Status"))})
		}
		e.Health = checks.AggregatedStatus()
		next[id] = e
		out = append(out, e)
	}
	h.cache = next
	slices.SortFunc(out, func(a, b peers.Entry) int { return strings.Compare(a.ServiceID, b.ServiceID) })
	return out, nil
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
