//! A descriptor set put together from files as they came (from reflection answers or
//! descriptor set files). Each file is kept as its bytes: decoding one into `prost_types` and
//! encoding it again would drop the options it carries as extensions, the task options among
//! them.

use std::collections::BTreeMap;

use prost::Message as _;

/// An encoded `FileDescriptorSet` whose files are kept as bytes.
#[derive(Clone, PartialEq, prost::Message)]
struct RawSet {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

/// Files by name, with what they import.
#[derive(Debug, Default)]
pub(crate) struct Files {
    files: BTreeMap<String, (Vec<String>, Vec<u8>)>,
}

impl Files {
    /// Adds one encoded `FileDescriptorProto`; a file of a name already held is kept as it was.
    pub(crate) fn add(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        let file = prost_types::FileDescriptorProto::decode(bytes.as_slice())
            .map_err(|e| format!("a file descriptor does not decode: {e}"))?;
        self.files
            .entry(file.name().to_owned())
            .or_insert((file.dependency, bytes));
        Ok(())
    }

    /// Adds every file of an encoded `FileDescriptorSet`.
    pub(crate) fn add_set(&mut self, bytes: &[u8]) -> Result<(), String> {
        let set = RawSet::decode(bytes)
            .map_err(|e| format!("it is not an encoded FileDescriptorSet: {e}"))?;
        for file in set.file {
            self.add(file)?;
        }
        Ok(())
    }

    /// The imports that no file held is named after.
    pub(crate) fn missing(&self) -> Vec<String> {
        let mut missing: Vec<String> = self
            .files
            .values()
            .flat_map(|(dependencies, _)| dependencies.iter())
            .filter(|d| !self.files.contains_key(*d))
            .cloned()
            .collect();
        missing.sort();
        missing.dedup();
        missing
    }

    /// The encoded `FileDescriptorSet`, every import before what imports it.
    pub(crate) fn encode(mut self) -> Vec<u8> {
        fn visit(
            name: &str,
            files: &mut BTreeMap<String, (Vec<String>, Vec<u8>)>,
            out: &mut Vec<Vec<u8>>,
        ) {
            let Some((dependencies, bytes)) = files.remove(name) else {
                return;
            };
            for dependency in &dependencies {
                visit(dependency, files, out);
            }
            out.push(bytes);
        }
        let mut out = Vec::new();
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            visit(&name, &mut self.files, &mut out);
        }
        RawSet { file: out }.encode_to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example contracts as the build compiled them: the task options are extensions.
    fn compiled() -> Vec<u8> {
        taskwire_build::describe(
            &["examples/chaos/v1/chaos.proto"],
            &[concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto")],
        )
        .expect("the example protos compile")
    }

    #[test]
    fn task_options_survive_and_imports_come_first() {
        let mut files = Files::default();
        files.add_set(&compiled()).expect("a set");
        assert!(files.missing().is_empty());
        let set = files.encode();
        let types = taskwire::task::TaskType::all_in(&set).expect("task types");
        let limited = types
            .iter()
            .find(|t| t.name.as_str() == "examples.chaos.v1.Chaos/Limited")
            .expect("Limited");
        assert_eq!(limited.declared.max_concurrency, 5);
        let order: Vec<String> = RawSet::decode(set.as_slice())
            .expect("a set")
            .file
            .iter()
            .map(|f| {
                prost_types::FileDescriptorProto::decode(f.as_slice())
                    .expect("a file")
                    .name()
                    .to_owned()
            })
            .collect();
        let chaos = order
            .iter()
            .position(|n| n == "examples/chaos/v1/chaos.proto");
        let options = order.iter().position(|n| n == "taskwire/v1/options.proto");
        assert!(options < chaos, "{order:?}");
    }

    #[test]
    fn a_missing_import_is_named() {
        let mut files = Files::default();
        let file = prost_types::FileDescriptorProto {
            name: Some("a.proto".into()),
            dependency: vec!["b.proto".into()],
            ..Default::default()
        };
        files.add(file.encode_to_vec()).expect("a file");
        assert_eq!(files.missing(), ["b.proto"]);
    }
}
