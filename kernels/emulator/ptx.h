// What the stand-in driver reads from a PTX module: the kernels (`.entry`), their parameter
// sizes, their `__launch_bounds__` (.maxntid / .reqntid) and how much static shared memory
// each one uses (the module's `.shared` variables that the entry, or a function it calls,
// refers to). The PTX is the source of truth because it is what the hardware loads.
#pragma once
#include <cctype>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace ptx {

struct Kernel {
    std::string name;
    std::vector<unsigned> param_sizes;
    unsigned max_threads = 0;  // 0: no bound
    size_t static_shared = 0;
};

inline bool ident_char(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '$' || c == '.'; }

// Whether `name` occurs in `text` as a whole identifier.
inline bool mentions(const std::string& text, const std::string& name) {
    for (size_t p = text.find(name); p != std::string::npos; p = text.find(name, p + 1)) {
        bool left = p == 0 || !ident_char(text[p - 1]);
        bool right = p + name.size() >= text.size() || !ident_char(text[p + name.size()]);
        if (left && right) return true;
    }
    return false;
}

inline unsigned type_size(const std::string& t) {
    if (t.size() < 3) return 0;
    unsigned bits = static_cast<unsigned>(std::atoi(t.c_str() + 2));
    return bits / 8;
}

// Size of one `.param` declaration: `.param .u64 .ptr .align 1 name`, `.param .f32 name`,
// `.param .align 8 .b8 name[16]`.
inline unsigned param_size(const std::string& decl) {
    unsigned size = 0, count = 1;
    size_t p = 0;
    while ((p = decl.find('.', p)) != std::string::npos) {
        size_t e = p + 1;
        while (e < decl.size() && std::isalnum(static_cast<unsigned char>(decl[e]))) ++e;
        std::string word = decl.substr(p, e - p);
        if (word.size() >= 3 && std::strchr("usfb", word[1]) && std::isdigit(static_cast<unsigned char>(word[2])))
            size = type_size(word);
        p = e;
    }
    size_t lb = decl.find('[');
    if (lb != std::string::npos) count = static_cast<unsigned>(std::atoi(decl.c_str() + lb + 1));
    return size * count;
}

// The text between the `{` at `open` and its matching `}`.
inline std::string body_at(const std::string& s, size_t open) {
    int depth = 0;
    for (size_t i = open; i < s.size(); ++i) {
        if (s[i] == '{') ++depth;
        if (s[i] == '}' && --depth == 0) return s.substr(open, i - open + 1);
    }
    return s.substr(open);
}

inline std::vector<Kernel> parse(const char* text) {
    const std::string s(text);
    // Module-scope shared variables (static __shared__ arrays end up here, named after their
    // function) with their sizes; `.extern .shared` is dynamic shared memory and costs nothing here.
    std::map<std::string, size_t> shared;
    for (size_t p = s.find(".shared"); p != std::string::npos; p = s.find(".shared", p + 1)) {
        size_t line_start = s.rfind('\n', p);
        line_start = line_start == std::string::npos ? 0 : line_start + 1;
        size_t line_end = s.find('\n', p);
        std::string line = s.substr(line_start, line_end - line_start);
        if (line.find(".extern") != std::string::npos) continue;
        if (line.find_first_not_of(" \t") != line.find(".shared") && line.find(".visible") == std::string::npos &&
            line.find(".global") == std::string::npos)
            continue;  // an instruction such as ld.shared, not a declaration
        size_t lb = line.find('['), semi = line.find(';');
        if (lb == std::string::npos || semi == std::string::npos || semi < lb) continue;
        size_t name_end = lb, name_start = name_end;
        while (name_start > 0 && ident_char(line[name_start - 1])) --name_start;
        std::string name = line.substr(name_start, name_end - name_start);
        unsigned elems = static_cast<unsigned>(std::atoi(line.c_str() + lb + 1));
        unsigned elem = 1;
        for (const char* t : {".b64", ".u64", ".f64", ".s64"})
            if (line.find(t) != std::string::npos) elem = 8;
        for (const char* t : {".b32", ".u32", ".f32", ".s32"})
            if (line.find(t) != std::string::npos) elem = 4;
        for (const char* t : {".b16", ".u16", ".f16", ".s16"})
            if (line.find(t) != std::string::npos) elem = 2;
        shared[name] = size_t(elems) * elem;
    }
    // Bodies of every .func and .entry.
    std::map<std::string, std::string> funcs;
    std::vector<Kernel> kernels;
    std::map<std::string, std::string> entry_bodies;
    for (const char* key : {".func", ".entry"}) {
        const bool entry = std::strcmp(key, ".entry") == 0;
        for (size_t p = s.find(key); p != std::string::npos; p = s.find(key, p + 1)) {
            if (p > 0 && ident_char(s[p - 1])) continue;
            size_t n = p + std::strlen(key);
            if (n >= s.size() || !std::isspace(static_cast<unsigned char>(s[n]))) continue;
            // `.func (.param .b32 ret) name (...)` has a return value first.
            while (n < s.size() && std::isspace(static_cast<unsigned char>(s[n]))) ++n;
            if (s[n] == '(') {
                int depth = 0;
                for (; n < s.size(); ++n) {
                    if (s[n] == '(') ++depth;
                    if (s[n] == ')' && --depth == 0) { ++n; break; }
                }
                while (n < s.size() && std::isspace(static_cast<unsigned char>(s[n]))) ++n;
            }
            size_t e = n;
            while (e < s.size() && ident_char(s[e])) ++e;
            std::string name = s.substr(n, e - n);
            size_t open_paren = s.find('(', e);
            size_t brace = s.find('{', e);
            size_t semi = s.find(';', e);
            if (brace == std::string::npos || (semi != std::string::npos && semi < brace)) continue;  // declaration
            std::string body = body_at(s, brace);
            if (!entry) {
                funcs[name] = body;
                continue;
            }
            Kernel k;
            k.name = name;
            size_t close_paren = open_paren;
            if (open_paren != std::string::npos && open_paren < brace) {
                int depth = 0;
                for (close_paren = open_paren; close_paren < brace; ++close_paren) {
                    if (s[close_paren] == '(') ++depth;
                    if (s[close_paren] == ')' && --depth == 0) break;
                }
                std::string params = s.substr(open_paren + 1, close_paren - open_paren - 1);
                size_t q = 0;
                while ((q = params.find(".param", q)) != std::string::npos) {
                    size_t end = params.find(',', q);
                    std::string decl = params.substr(q + 6, end == std::string::npos ? std::string::npos : end - q - 6);
                    k.param_sizes.push_back(param_size(decl));
                    q += 6;
                }
            }
            std::string attrs = s.substr(close_paren, brace - close_paren);
            for (const char* bound : {".maxntid", ".reqntid"}) {
                size_t b = attrs.find(bound);
                if (b == std::string::npos) continue;
                unsigned x = 1, y = 1, z = 1;
                std::sscanf(attrs.c_str() + b + std::strlen(bound), " %u , %u , %u", &x, &y, &z);
                k.max_threads = x * y * z;
            }
            entry_bodies[name] = body;
            kernels.push_back(k);
        }
    }
    for (auto& k : kernels) {
        // Shared variables reached from the entry through any chain of calls.
        std::set<std::string> seen{k.name};
        std::vector<const std::string*> todo{&entry_bodies[k.name]};
        std::set<std::string> used;
        while (!todo.empty()) {
            const std::string* body = todo.back();
            todo.pop_back();
            for (auto& [var, size] : shared)
                if (mentions(*body, var)) used.insert(var);
            for (auto& [fname, fbody] : funcs)
                if (!seen.count(fname) && mentions(*body, fname)) {
                    seen.insert(fname);
                    todo.push_back(&fbody);
                }
        }
        for (auto& v : used) k.static_shared += shared[v];
    }
    return kernels;
}

}  // namespace ptx
