-- Where each checkpointed reader (projector or relay) has got to in the event store.
create table reader_checkpoint (
    name           text        not null constraint reader_checkpoint_pkey primary key,
    transaction_id xid8        not null default '0'::xid8,
    position       bigint      not null default 0,
    updated_at     timestamptz not null default now()
);

-- The profile read model: one row per registered user.
create table profile (
    user_id      uuid        not null constraint profile_pkey primary key,
    username     text        not null,
    email        text        not null,
    is_active    boolean     not null default false,
    date_joined  timestamptz not null,
    last_login   timestamptz,
    country      text        not null default '',
    profession   text        not null default '',
    bio          text        not null default '',
    thoughts     text        not null default '',
    profile_img  text        not null default '',
    -- Bumped by every password change or reset: access and refresh tokens carry the epoch they
    -- were issued under and are refused once it is behind.
    token_epoch  integer     not null default 0,
    -- The User stream's sequence this row reflects, for read-your-writes.
    version      bigint      not null default 0,
    updated_at   timestamptz not null default now()
);

insert into reader_checkpoint (name) values ('profile'), ('relay');
