//! Start-up validation of a pipeline file: every value types cannot check, each message
//! naming its key.

use super::*;

impl PipelineConfig {
    /// Checks values that types cannot; each message names its key.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        let nonempty = |v: &str, key: &str, errs: &mut Vec<String>| {
            if v.trim().is_empty() {
                errs.push(format!("`{key}` must not be empty"));
            }
        };
        nonempty(&self.pipeline.name, "pipeline.name", &mut errs);
        if self.encoder.device == crate::encoder::Device::Cuda
            && self.encoder.precision == crate::encoder::PrecisionChoice::Int8
        {
            errs.push(
                "`encoder.precision` = \"int8\" runs on CPU only, but `encoder.device` = \"cuda\": use precision \"f32\" or \"auto\" on CUDA".into(),
            );
        }
        nonempty(&self.kafka.brokers, "kafka.brokers", &mut errs);
        nonempty(&self.kafka.group_id, "kafka.group_id", &mut errs);
        if let Some(id) = &self.kafka.group_instance_id {
            nonempty(id, "kafka.group_instance_id", &mut errs);
        }
        nonempty(&self.kafka.output_topic, "kafka.output_topic", &mut errs);
        nonempty(
            &self.kafka.dead_letter_topic,
            "kafka.dead_letter_topic",
            &mut errs,
        );
        if self.kafka.input_topics.is_empty()
            || self.kafka.input_topics.iter().any(|t| t.trim().is_empty())
        {
            errs.push("`kafka.input_topics` must list at least one non-empty topic".into());
        }
        for t in &self.kafka.input_topics {
            if t == &self.kafka.output_topic || t == &self.kafka.dead_letter_topic {
                errs.push(format!(
                    "`kafka.input_topics` contains {t:?}, which is also the output or dead-letter topic: the pipeline would consume its own output"
                ));
            }
        }
        for key in self
            .kafka
            .options
            .keys()
            .chain(self.kafka.consumer_options.keys())
        {
            if matches!(
                key.as_str(),
                "enable.auto.commit"
                    | "enable.auto.offset.store"
                    | "group.id"
                    | "bootstrap.servers"
            ) {
                errs.push(format!(
                    "`kafka.options.\"{key}\"` is managed by uwe-connect (it guarantees delivery); remove it"
                ));
            }
        }
        if self.codec.format == Format::Avro
            && self.codec.schema_dir.is_none()
            && self.codec.registry_url.is_none()
        {
            errs.push("`codec.format = \"avro\"` needs `codec.schema_dir` or `codec.registry_url` to find writer schemas".into());
        }
        if self.codec.max_event_bytes == 0 {
            errs.push("`codec.max_event_bytes` must be > 0".into());
        }
        for (v, key) in [
            (self.model.shadow_share, "model.shadow_share"),
            (self.model.min_shadow_overlap, "model.min_shadow_overlap"),
        ] {
            if !(0.0..=1.0).contains(&v) {
                errs.push(format!("`{key}` must be between 0 and 1, got {v}"));
            }
        }
        if self.targets.is_empty() {
            errs.push("`targets` must define at least one [[targets]] table".into());
        }
        let fields = known_fields(self.pipeline.event_type);
        let mut names = std::collections::HashSet::new();
        for (i, t) in self.targets.iter().enumerate() {
            if !names.insert(&t.name) {
                errs.push(format!("`targets[{i}].name` {:?} is used twice", t.name));
            }
            if t.k == 0 {
                errs.push(format!("`targets[{i}].k` must be > 0"));
            }
            if t.max_mentions == 0 {
                errs.push(format!("`targets[{i}].max_mentions` must be > 0"));
            }
            if !(-1.0..=1.0).contains(&t.min_score) {
                errs.push(format!("`targets[{i}].min_score` must be between -1 and 1"));
            }
            if !(t.alias_weight > 0.0 && t.alias_weight <= 1.0) {
                errs.push(format!(
                    "`targets[{i}].alias_weight` must be in (0, 1], got {}",
                    t.alias_weight
                ));
            }
            if t.fields.is_empty() {
                errs.push(format!("`targets[{i}].fields` must not be empty"));
            }
            for f in &t.fields {
                if !fields.contains(&f.as_str()) {
                    errs.push(format!(
                        "`targets[{i}].fields` has {f:?}, which a {} event does not have; use one of {fields:?}",
                        self.pipeline.event_type.as_str()
                    ));
                }
            }
        }
        if self.batching.max_batch_tokens < 16 {
            errs.push("`batching.max_batch_tokens` must be at least 16".into());
        }
        if self.model.pin.is_some() && self.model.registry.is_none() {
            errs.push("`model.pin` needs `model.registry`".into());
        }
        if self.model.registry.is_some() && self.model.watch_interval_ms < 100 {
            errs.push("`model.watch_interval_ms` must be at least 100".into());
        }
        if self.batching.max_in_flight == 0 {
            errs.push("`batching.max_in_flight` must be > 0".into());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("; "))
        }
    }
}
