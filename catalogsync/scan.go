package catalogsync

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// The health endpoint's response is an array of {"Node": {...}, "Service":
// {...}, "Checks": [...]}, megabytes of it with thousands of instances, of
// which meshd reads a few fields. scanner walks it once, skipping
// everything else without building values, so that a read costs one pass
// over the bytes and no memory beyond them.

var errSyntax = errors.New("malformed JSON")

// maxDepth bounds how deeply objects and arrays may nest. Consul's answer
// nests five levels; a hostile or corrupt body nested millions deep would
// otherwise recurse until the goroutine's stack is exhausted.
const maxDepth = 32

type scanner struct {
	b     []byte
	i     int
	depth int // objects and arrays open around the position
	// base is where b starts in the response, for the offsets errors
	// give (a response is read a window at a time).
	base int64
}

// at is the response offset of b[i].
func (s *scanner) at(i int) int64 { return s.base + int64(i) }

func (s *scanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// peek returns the next non-space byte, or 0 at the end.
func (s *scanner) peek() byte {
	s.ws()
	if s.i >= len(s.b) {
		return 0
	}
	return s.b[s.i]
}

func (s *scanner) expect(c byte) error {
	if s.peek() != c {
		return fmt.Errorf("%w at byte %d: want %q", errSyntax, s.at(s.i), c)
	}
	s.i++
	return nil
}

// str reads a string and returns its raw bytes (without quotes) and
// whether it has escapes.
func (s *scanner) str() (raw []byte, escaped bool, err error) {
	if err := s.expect('"'); err != nil {
		return nil, false, err
	}
	start := s.i
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c == '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, escaped, nil
		case c == '\\':
			escaped = true
			s.i += 2
		case c < 0x20:
			return nil, false, fmt.Errorf("%w at byte %d: control character in string", errSyntax, s.at(s.i))
		default:
			s.i++
		}
	}
	return nil, false, fmt.Errorf("%w: unterminated string", errSyntax)
}

// text reads a string value as Go text.
func (s *scanner) text() (string, error) {
	s.ws()
	start := s.i
	raw, escaped, err := s.str()
	if err != nil {
		return "", err
	}
	if !escaped {
		return string(raw), nil
	}
	var out string
	if err := json.Unmarshal(s.b[start:s.i], &out); err != nil {
		return "", fmt.Errorf("%w: bad string: %v", errSyntax, err)
	}
	return out, nil
}

// span skips one value and returns its bytes.
func (s *scanner) span() ([]byte, error) {
	s.ws()
	start := s.i
	if err := s.skip(); err != nil {
		return nil, err
	}
	return s.b[start:s.i], nil
}

// uint reads an unsigned integer.
func (s *scanner) uint() (uint64, error) {
	s.ws()
	start := s.i
	for s.i < len(s.b) && s.b[s.i] >= '0' && s.b[s.i] <= '9' {
		s.i++
	}
	n, err := strconv.ParseUint(string(s.b[start:s.i]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%w at byte %d: want an unsigned integer", errSyntax, s.at(start))
	}
	return n, nil
}

// skip passes over one value of any kind.
func (s *scanner) skip() error {
	switch c := s.peek(); c {
	case '"':
		_, _, err := s.str()
		return err
	case '{', '[':
		return s.each(c, func(key []byte) error { return s.skip() })
	case 0:
		return fmt.Errorf("%w: unexpected end", errSyntax)
	default:
		start := s.i
		for s.i < len(s.b) {
			switch s.b[s.i] {
			case ',', '}', ']', ' ', '\t', '\n', '\r':
				goto done
			}
			s.i++
		}
	done:
		lit := string(s.b[start:s.i])
		switch lit {
		case "true", "false", "null":
			return nil
		}
		if _, err := strconv.ParseFloat(lit, 64); err != nil || lit == "" {
			return fmt.Errorf("%w at byte %d: bad literal %q", errSyntax, s.at(start), clipBytes(lit))
		}
		return nil
	}
}

// each walks an object ('{': f gets each key, then reads or skips its
// value) or an array ('[': f gets nil, then reads or skips the element).
func (s *scanner) each(open byte, f func(key []byte) error) error {
	closing := byte('}')
	if open == '[' {
		closing = ']'
	}
	if err := s.expect(open); err != nil {
		return err
	}
	if s.depth++; s.depth > maxDepth {
		return fmt.Errorf("%w at byte %d: nested deeper than %d", errSyntax, s.at(s.i), maxDepth)
	}
	defer func() { s.depth-- }()
	if s.peek() == closing {
		s.i++
		return nil
	}
	for {
		var key []byte
		if open == '{' {
			k, _, err := s.str()
			if err != nil {
				return err
			}
			key = k
			if err := s.expect(':'); err != nil {
				return err
			}
		}
		if err := f(key); err != nil {
			return err
		}
		switch s.peek() {
		case ',':
			s.i++
		case closing:
			s.i++
			return nil
		default:
			return fmt.Errorf("%w at byte %d: want ',' or %q", errSyntax, s.at(s.i), closing)
		}
	}
}

// isNull consumes a null, if that is what comes next.
func (s *scanner) isNull() bool {
	if s.peek() == 'n' && len(s.b)-s.i >= 4 && string(s.b[s.i:s.i+4]) == "null" {
		s.i += 4
		return true
	}
	return false
}

func clipBytes(s string) string {
	if len(s) > 20 {
		return s[:20] + "..."
	}
	return s
}
